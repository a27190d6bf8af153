"""qnode.storage"""
