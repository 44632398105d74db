# Flower settings: `medq flower --conf deploy/flowerconfig.py`. Keep it on loopback (or behind
# an authenticating proxy): Flower can revoke tasks. medq passes --address itself (127.0.0.1
# unless you give one) and serves any other address only with MEDQ_FLOWER_BASIC_AUTH or OAuth
# (MEDQ_FLOWER_AUTH, MEDQ_FLOWER_OAUTH2_*); never put credentials in this file.
address = "127.0.0.1"
port = 5555
persistent = False
max_tasks = 10000
