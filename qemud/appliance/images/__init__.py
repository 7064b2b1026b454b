"""Appliance images: import, deploy, A/B update with rollback, factory reset.

An appliance is a tarball (optionally gzip'ed, bzip2'ed or xz'ed) holding a descriptor
(``appliance.json`` or ``appliance.toml``), its disk images and, for direct kernel boot,
a kernel and initrd.
docs/APPLIANCE-IMAGES.md describes the descriptor and every rule below; in short:

* **import** unpacks the tarball with :mod:`.unpack` (a child the loop reaps, never in
  the loop; at most ``appliance.import_max_bytes``) into a staging directory of the
  image store, checks the descriptor (every field, every file, only regular files,
  images without backing/data files) and the host (an emulator for the arch, every
  required feature), and renames it to ``<store>/<name>/<version>/`` with every file
  mode 0444: originals are never written again.
* **deploy** gives a VM its own qcow2 overlays on the originals (system and data disks)
  and fresh scratch disks in ``<state_dir>/vms/<vm>/``, then defines the domain with its
  origin and disk classes in the metadata.
* **update** (A/B): the VM is stopped (if running), its system disk gets a new overlay in
  the other slot on the new version's image (the previous overlay is kept), data disks are
  kept, scratch disks recreated (renamed into place once the new definition is saved);
  the guest is started again if it was running. The update is confirmed by the guest's
  heartbeat within ``appliance.update_deadline`` of its start; otherwise it is rolled
  back to the previous slot and version by itself. State and definition are switched so
  that a daemon killed in between leaves a state that start-up settles
  (``layout.settle_switch``).
* **reset**: the system overlay is replaced by an empty one on the original, data kept,
  scratch recreated.

Every ``qemu-img``/``tar`` runs as a child process reaped by the loop (``tools.ToolRunner``);
multi-step operations are generator tasks resumed from the loop (:func:`run_task`).

==========  ==========================================================================
module      what
==========  ==========================================================================
layout      paths and file names on disk, the start-up sweep (all that start-up imports)
descriptor  the descriptor: its fields and checks, the host check, version order
store       the image store (``<store>/<name>/<version>/``) and per-VM state records
base        shared by the operations: tasks, VM state, ``qemu-img``, the busy map
importer    APPLIANCE_IMPORT: unpack, check, store read-only
unpack      the unpacking child (a script, standard library only): the size limit
deploy      APPLIANCE_DEPLOY, APPLIANCE_LIST, APPLIANCE_RESET
update      APPLIANCE_UPDATE, its confirmation by heartbeat and the rollback
operations  the operations above over one store, tool runner and busy map
duty        wiring: procedures, the event listener, the start-up clean-up; builds the
            operations on first use
==========  ==========================================================================
"""

from __future__ import annotations

# Only the duty: re-exporting the other modules here would import them all at start-up,
# which the duty defers to the first image call (see .duty). Import them by module name.
from .duty import ImagesDuty, install

__all__ = ["ImagesDuty", "install"]
