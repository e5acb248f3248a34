"""shmjanitor: find and safely remove leaked System V IPC objects (segments, semaphore sets, message queues)."""

__version__ = "0.1.0"
