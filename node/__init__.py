"""qnode.node"""
