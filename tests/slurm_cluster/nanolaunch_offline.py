"""Keep SkyPilot off the internet in this virtual environment.

Installed by tests/slurm_cluster/up.sh into the venv's site-packages together with
``nanolaunch_offline.pth`` (one line: ``import nanolaunch_offline``), so it runs
in every interpreter of the venv: the CLI, the API server, its workers and the
managed-jobs controller it spawns.  It imports nothing from SkyPilot itself: a
finder on ``sys.meta_path`` waits for the modules below to be imported and
replaces a few functions right after each module has executed.

What it disables, and why:
  sky.backends.backend_utils.check_network_connection
  sky.backends.backend_utils.async_check_network_connection
      HEAD https://8.8.8.8 / https://1.1.1.1.  The managed-jobs controller calls
      the async one every 15 s (sky/jobs/controller.py) and, offline, loops
      forever on it.  Both become no-ops ("the network is up").
  sky.server.version_check._check_pypi_release
      The API server asks pypi.org for SkyPilot's latest version once a day.
      Becomes "no newer version known".
  sky.clouds.aws (on import: AWS_EC2_METADATA_DISABLED=true, unless already set)
      Every launch collects all clouds' credential files
      (sky/check.py, get_cloud_credential_file_mounts), and for AWS runs
      `aws configure list`; with an awscli installed and no credentials that
      queries the EC2 metadata service at http://169.254.169.254.  The variable
      makes botocore/awscli skip it.  Set only in processes that import
      SkyPilot's AWS module, and inherited by the commands they run.

Check:  <venv>/bin/python -m nanolaunch_offline   (exit 0 when active and the
functions are the no-ops).  Opt out (e.g. for real clouds): NL_SKY_ONLINE=1.
If NANOLAUNCH_OFFLINE_LOG names a file, each patch appends "<pid> <module>".
"""
import importlib.abc
import os
import sys

_MARK = '__nanolaunch_offline__'


def check_network_connection():
    """No-op replacement: pretend the network is up without probing it."""
    return None


async def async_check_network_connection():
    """No-op replacement: pretend the network is up without probing it."""
    return None


def _check_pypi_release():
    """No-op replacement: no version lookup on pypi.org."""
    return None


for _f in (check_network_connection, async_check_network_connection,
           _check_pypi_release):
    setattr(_f, _MARK, True)

# Environment variables set (if unset) when a module is imported.
ENV_ON_IMPORT = {
    'sky.clouds.aws': {'AWS_EC2_METADATA_DISABLED': 'true'},
}

PATCHES = {
    'sky.backends.backend_utils': {
        'check_network_connection': check_network_connection,
        'async_check_network_connection': async_check_network_connection,
    },
    'sky.server.version_check': {
        '_check_pypi_release': _check_pypi_release,
    },
    'sky.clouds.aws': {},
}


def _apply(module):
    for attr, replacement in PATCHES[module.__name__].items():
        setattr(module, attr, replacement)
    for var, value in ENV_ON_IMPORT.get(module.__name__, {}).items():
        os.environ.setdefault(var, value)
    path = os.environ.get('NANOLAUNCH_OFFLINE_LOG')
    if path:
        try:
            with open(path, 'a', encoding='utf-8') as f:
                f.write(f'{os.getpid()} {module.__name__}\n')
        except OSError:
            pass


class _Loader(importlib.abc.Loader):
    """Wraps the real loader; patches the module once it has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _apply(module)

    def __getattr__(self, name):  # get_code, get_source, is_package, ...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the patched modules through the other finders, wraps the loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader,
                                                       'exec_module'):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install():
    """Installs the finder (idempotent) and patches already-imported modules."""
    if os.environ.get('NL_SKY_ONLINE') == '1':
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name in PATCHES:
        if name in sys.modules:
            _apply(sys.modules[name])


def active():
    """True when the import hook is installed in this interpreter."""
    return any(isinstance(f, _Finder) for f in sys.meta_path)


def patched():
    """Imports the target modules; True when every target is the no-op."""
    for name, attrs in PATCHES.items():
        module = importlib.import_module(name)
        for attr in attrs:
            if not getattr(getattr(module, attr, None), _MARK, False):
                return False
        for var, value in ENV_ON_IMPORT.get(name, {}).items():
            if os.environ.get(var) != value:
                return False
    return True


if __name__ != '__main__':
    install()
else:
    # Run as `python -m nanolaunch_offline`: check the copy the .pth imported.
    import nanolaunch_offline as _installed  # pylint: disable=import-self
    _ok = _installed.active() and _installed.patched()
    print('nanolaunch_offline: ' + (
        'active, network checks are no-ops' if _ok else 'NOT active'))
    sys.exit(0 if _ok else 1)
