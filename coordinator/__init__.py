"""qnode.coordinator"""
