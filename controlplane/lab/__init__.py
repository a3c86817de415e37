"""controlplane.lab"""
