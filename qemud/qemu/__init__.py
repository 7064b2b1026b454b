"""QEMU driver: the pure parts (no daemon I/O), split like libvirt's qemu driver.

* :mod:`qemud.qemu.qmp` – sans-IO QMP client protocol
* :mod:`qemud.qemu.capabilities` – emulator probing (cached) and capabilities XML
* :mod:`qemud.qemu.kvmprobe` – does KVM really run guests? (a timed tiny guest)
* :mod:`qemud.qemu.arch` – per-architecture strategies and their device table
* :mod:`qemud.qemu.command` – domain definition → QEMU argv
* :mod:`qemud.qemu.domain` – the slice of the domain model this layer reads
* :mod:`qemud.qemu.naming` – deterministic device ids and block node names
* :mod:`qemud.qemu.qcow2` – a qcow2 image's backing file, read from its header
* :mod:`qemud.qemu.chardevs` – which chardev a serial/console/channel is; its pty
* :mod:`qemud.qemu.errors` – the error hierarchy
"""
