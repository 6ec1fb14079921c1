"""The proxied request: canonical path, routing, access rules, headers, forwarding."""
