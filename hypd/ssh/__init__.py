"""SSH hosts: the `Host` interface over one asyncssh connection per machine.

connection.py  opening the connection and saying why it failed
host.py        SshHost: the connection kept up, the watcher and GPU stream over it
gpustream.py   one streaming nvidia-smi per host
staging.py     a study's code copied over SFTP, only what changed
"""

from hypd.ssh.connection import remote_path_expr
from hypd.ssh.host import SshHost
from hypd.ssh.staging import local_manifest

__all__ = ["SshHost", "local_manifest", "remote_path_expr"]
