"""The gateway's own pages and APIs under the prefix (``/_gateway``)."""
