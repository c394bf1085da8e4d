/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of dlq, set up when the library is preloaded: the
 *	  launcher's pid and one slot per database with its worker's heartbeat,
 *	  last-round counters and the progress of the round under way.
 *	  etl_status and dlq.worker_status() read it; workers write it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include "shmem.h"

DlqShared  *dlq_shared = NULL;

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif

static void
shmem_request_space(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(MAXALIGN(sizeof(DlqShared)));
	RequestNamedLWLockTranche("dlq", 1);
}

static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	dlq_shared = ShmemInitStruct("dlq", sizeof(DlqShared), &found);
	if (!found)
	{
		memset(dlq_shared, 0, sizeof(DlqShared));
		dlq_shared->lock = &(GetNamedLWLockTranche("dlq"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init while shared_preload_libraries are loaded. */
void
dlq_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request_space;
#else
	shmem_request_space();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

DlqWorkerSlot *
dlq_worker_slot_locked(Oid dboid, bool create)
{
	DlqWorkerSlot *free_slot = NULL;

	for (int i = 0; i < DLQ_MAX_DATABASES; i++)
	{
		DlqWorkerSlot *slot = &dlq_shared->slots[i];

		if (slot->dboid == dboid)
			return slot;
		if (slot->dboid == InvalidOid && free_slot == NULL)
			free_slot = slot;
	}
	if (create && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(DlqWorkerSlot));
		free_slot->dboid = dboid;
		return free_slot;
	}
	return NULL;
}

bool
dlq_worker_slot_copy(Oid dboid, DlqWorkerSlot *slot)
{
	DlqWorkerSlot *found;

	if (dlq_shared == NULL)
		return false;
	LWLockAcquire(dlq_shared->lock, LW_SHARED);
	found = dlq_worker_slot_locked(dboid, false);
	if (found)
		memcpy(slot, found, sizeof(DlqWorkerSlot));
	LWLockRelease(dlq_shared->lock);
	return found != NULL;
}
