from tests.support.apiserver_fixtures import control_plane, reconciler  # noqa: F401
