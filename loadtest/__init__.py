"""qnode.loadtest"""
