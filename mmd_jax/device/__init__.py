"""Devices and XLA: meshes and shardings, loops, timing, collectives, accelerator targets, layer profiles."""
