"""Who is asking: the users file, session cookies, the session lifecycle, assertions."""
