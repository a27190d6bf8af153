"""qnode.sdk"""
