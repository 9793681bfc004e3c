"""Host tier: real processes, namespaces, keepalived and iptables on the host kernel (root)."""
