"""A whole federation on one machine: the ServerApp and the owners' ClientApps on
Flower's Simulation Engine (cli -> simulation -> server, client -> common)."""
