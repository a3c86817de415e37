"""The node agent: keeps one node's XDP dataplane equal to the store."""
