from tests.apiserver.fixtures import control_plane, reconciler  # noqa: F401
