"""The ipvslb labs: one topology file (examples/lab-topology.yaml) read by the Vagrant multi-VM
lab and by the one-machine lab, turned into each node's ipvslb config by ``topology``."""
