from setuptools import setup

# Metadata lives in setup.cfg; twisted/plugins is listed there explicitly so
# that `twistd worknet-rpc` finds the plugin after installation.
setup()
