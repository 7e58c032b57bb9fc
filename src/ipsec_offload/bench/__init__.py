"""The benchmark: the datapath against its ceiling (bare AEAD) and its peer (scapy).

`run.run_benchmark` measures, `report` prints and saves, `cli.bench` is `ipsec-offload bench`.
See docs/performance.md for the method and the latest figures.
"""
