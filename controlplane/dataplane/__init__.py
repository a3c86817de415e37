"""controlplane.dataplane"""
