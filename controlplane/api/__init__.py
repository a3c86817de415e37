"""controlplane.api"""
