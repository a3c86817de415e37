"""controlplane.lab: the embedded runtime. Nodes, pods and an `outside` client host made of
network namespaces, so the product runs and is tested on one machine with real traffic.

    topology.Lab       up / down / status, add_pod / remove_pod, exec, attach_points
    plan               names and addresses (kubeadm defaults, walkthrough node IPs)
    state              the JSON record of everything made (<state dir>/lab/state.json)
    netns, wiring      namespaces; links, addresses, routes, neighbours (pyroute2)
    offload            TX checksum offload off on lab links (complete checksums for XDP)
    images, servers    which server an image stands for; start it and wait until ready
    podserver          the one-process HTTP / UDP-echo server a pod runs
    procs              background processes in a namespace, stopped by verified pid
    hooks              seam for per-node processes (the agent) and lab-down clean-up
    client             temporary client pod for `svcctl run --rm -it`
    commands           `svcctl lab ...` and `svcctl exec`

This package imports nothing at import time: `python -m controlplane.lab.podserver` starts
once per pod and must stay light.
"""
