"""shmjanitor: find and safely remove leaked System V shared memory segments."""

__version__ = "0.1.0"
