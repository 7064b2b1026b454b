"""External disk snapshots, revert, delete and point-in-time backups — inside the loop.

The seed's "Backup/Restore: periodically take guest's image snapshots" done with qcow2
overlays instead of LVM. See docs/SNAPSHOTS.md for the user's view; in short:

**Create** (DOMAIN_SNAPSHOT_CREATE). Every writable qcow2 disk (CD-ROMs and
``<readonly/>`` disks are left out) gets a new, empty qcow2 overlay whose backing file is
the disk's current image; from then on the guest writes to the overlay and the old
image is frozen: it *is* the snapshot. With a running guest the overlays are created with
``qemu-img create -u`` (sized from ``query-block``, the backing file is not opened: QEMU
holds its lock), added with ``blockdev-add`` and switched to in one QMP ``transaction``
of ``blockdev-snapshot`` actions, so all disks are cut at the same instant and the guest
never stops. The live and the persistent definitions then point at the overlays (a
restart boots on them). Raw disks are refused: a raw image cannot have a backing file.

**Revert** (DOMAIN_SNAPSHOT_REVERT) to S: each disk of S gets a NEW empty overlay on
top of the image that was frozen when S was taken (S stays reusable: revert to it twice
and get the same disks twice), made while the guest runs on; then the guest is
destroyed if it runs, the definition points at the overlays, and the guest is started
again if it ran (paused if it was paused; REVERT_RUNNING / REVERT_PAUSED, libvirt's
flags, choose instead). What the guest wrote since is discarded,
exactly as a revert in libvirt. A failure after the stop puts the disks back and starts
the guest again as it was.

**Delete** (DOMAIN_SNAPSHOT_DELETE) of S discards the point in time S, as libvirt does:
when S's frozen image is the direct backing file of the disks the domain uses now and
nothing else reads from it, the top overlays are committed into it (``qemu-img commit``
shut off; QMP active ``block-commit`` + ``block-job-complete`` running) and the disks
point at it again. Otherwise only the metadata goes (children of S get S's parent). An
overlay file the daemon created is removed once nothing needs it any more: no disk
(persistent, pending or live definition) and no remaining snapshot has it in its backing
chain. Images the daemon did not create (the user's originals) are never deleted. A
merge is marked in the metadata before it starts (``SnapshotRecord.merging``); a mark a
killed daemon left makes the snapshot a failed merge (``merge_failed``: revert refused),
and the next daemon cancels the commit jobs it left in QEMU when it re-attaches to the
guest (``leftovers``; as it ends a killed daemon's backup and removes its target files).
With METADATA_ONLY (libvirt's flag) only the metadata goes: no image is merged or
removed, and the images S froze are recorded as the user's (``DomainSnapshots.kept``):
no later collection removes them, no merge writes into or below them.

**Backup** (DOMAIN_BACKUP): ``blockdev-backup sync=full`` of the disk(s) to new target
nodes in one ``transaction`` (one consistent instant for all disks; QEMU's
copy-before-write keeps it consistent while the guest writes on), tracked by the
BLOCK_JOB_COMPLETED event, progress from ``query-jobs`` every 0.5 s as appliance events
``backup-progress`` ("NN%"), then ``backup-completed`` (or ``backup-failed``). A shut-off
guest is backed up with ``qemu-img convert``. The reply comes when the copy is complete.

**Transient domains**: a transient domain's metadata goes with it when it stops (set
aside as ``snapshots.<uuid>.transient-ended.json``; every image stays), as libvirt drops
it; a domain created again with the same uuid starts without snapshots.

**Appliance updates**: create and revert are refused while an A/B update of the domain
waits for its confirmation (its rollback rewrites the disks a snapshot would build on).

**Undefine**: as libvirt, an inactive domain with snapshots is only undefined with
``UndefineFlags.SNAPSHOTS_METADATA`` (``undefine --snapshots-metadata``), which removes
its metadata and the overlays only snapshots needed; what a definition uses stays.

Metadata lives in ``<state_dir>/snapshots/<domain>/snapshots.json`` (atomic writes), the
overlays in ``<state_dir>/snapshots/<domain>/images/``. ``qemu-img`` runs as a child the
loop reaps (``tools.ToolRunner``): nothing here blocks or waits.

============  ==========================================================================
module        what
============  ==========================================================================
records       metadata records and their store (``snapshots.json``, ``images/``)
base          shared by the operations: disks, overlay files, chains, Deferred helpers
create        DOMAIN_SNAPSHOT_CREATE, DOMAIN_SNAPSHOT_LIST
revert        DOMAIN_SNAPSHOT_REVERT, the undefine rule
delete        DOMAIN_SNAPSHOT_DELETE and its merge (commit) jobs
backup        DOMAIN_BACKUP and its block jobs
leftovers     a killed daemon's merge and backup jobs, ended when a guest is re-attached
snapshot_xml  DOMAIN_SNAPSHOT_GET_XML: libvirt's ``<domainsnapshot>`` XML of a snapshot
operations    the store, the tool runner and the operations over them; their driver hooks
duty          wiring: procedures, the DOMAIN_UNDEFINE check, the start-up clean-up
============  ==========================================================================

Only the duty is imported with the package: the other modules are imported by the first
snapshot procedure or undefine (see :mod:`.duty`), so they are not re-exported here;
import them by name (``from qemud.appliance.snapshots.records import SnapshotStore``).
"""

from __future__ import annotations

from .duty import SnapshotDuty, install

__all__ = ["SnapshotDuty", "install"]
