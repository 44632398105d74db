# Flower settings: `medq flower --conf deploy/flowerconfig.py`. Keep it on loopback (or behind
# an authenticating proxy): Flower can revoke tasks.
address = "127.0.0.1"
port = 5555
persistent = False
max_tasks = 10000
