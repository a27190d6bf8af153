"""qnode.transport"""
