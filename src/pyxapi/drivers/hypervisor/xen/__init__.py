"""Xen through libvirt's libxl driver: pyxapi as the toolstack in dom0 (see driver.py)."""

from pyxapi.drivers.hypervisor.xen.host import is_xen_dom0

__all__ = ["is_xen_dom0"]
