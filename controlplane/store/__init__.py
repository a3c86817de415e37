"""controlplane.store"""
