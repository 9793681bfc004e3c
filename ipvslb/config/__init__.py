"""Configuration: the typed model, the file formats (ipvslb YAML, k0s ClusterConfig), validation
and the mode decision.

Owns everything between a file a user hands ipvslb and a validated ``Config``: the bounded YAML
reader, scalar checks, the one-line errors naming a field. Must not import any other ipvslb
package (only ``ipvslb.errors``): configuration is the start of the data flow, it knows nothing
of keepalived, the node, IPVS or the proxy.
"""
