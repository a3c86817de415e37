"""controlplane.controllers"""
