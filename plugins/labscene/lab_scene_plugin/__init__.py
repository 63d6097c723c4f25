"""The drift lab's scene start as a session hook for tokentrim-server (hook ``lab_scene``)."""

from lab_scene_plugin.hook import LabSceneHook

__all__ = ["LabSceneHook"]
