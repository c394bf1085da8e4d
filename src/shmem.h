/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared memory of dlq: one slot per database for the background
 *	  worker's heartbeat, read by etl_status.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_SHMEM_H
#define DLQ_SHMEM_H

#include "datatype/timestamp.h"
#include "storage/lwlock.h"

#define DLQ_MAX_DATABASES 64
#define DLQ_LAST_ERROR_LEN 256

typedef struct DlqWorkerSlot
{
	Oid			dboid;			/* InvalidOid: slot free */
	int			pid;			/* 0: no worker running for this database */
	TimestampTz started_at;
	TimestampTz last_heartbeat; /* end of the last naptime round */
	/* what the last round did */
	int64		last_expired;
	int64		last_purged;
	int64		last_recovered;
	int64		last_retried;
	int64		last_alerts;
	/* since the worker started */
	int64		rounds;
	int64		errors;
	TimestampTz last_error_at;
	char		last_error[DLQ_LAST_ERROR_LEN];
	/* appended by the worker (worker.c) */
	int64		last_events_purged;
	TimestampTz last_round_start;
	int64		starts;			/* workers started for this database */
} DlqWorkerSlot;

typedef struct DlqShared
{
	LWLock	   *lock;			/* protects everything below */
	int			launcher_pid;
	DlqWorkerSlot slots[DLQ_MAX_DATABASES];
} DlqShared;

/* NULL unless the library was preloaded. */
extern DlqShared *dlq_shared;

extern void dlq_shmem_request(void);

/*
 * Copy the slot of a database into *slot.  Returns false when the library
 * is not preloaded (no shared memory) or the database has no slot.
 */
extern bool dlq_worker_slot_copy(Oid dboid, DlqWorkerSlot *slot);

/*
 * The slot of a database, created if absent; NULL when all are taken.
 * Caller holds dlq_shared->lock exclusively.
 */
extern DlqWorkerSlot *dlq_worker_slot_locked(Oid dboid, bool create);

#endif							/* DLQ_SHMEM_H */
