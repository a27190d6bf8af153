"""qnode.loadtest: Locust load tests of a real node (peak shaving, backlog, steady state).

Run a scenario with `python -m qnode.loadtest.run <scenario>`; see run.py. Locust runs in the
runner's process (gevent), each producer/consumer user drives the SDK from a child process of
its own (channel.py explains why), the lag comes from the broker's describe_group, and every
run ends with an exactly-once-per-group check of the acknowledged records (verify.py).
"""
