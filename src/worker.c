/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The dlq background worker: a launcher and one worker per database.
 *
 * The launcher is registered when the library is in
 * shared_preload_libraries.  It connects to no database and reads the
 * shared catalog pg_database every naptime.  It cannot see pg_extension of
 * other databases, so it starts a worker in every connectable, non-template
 * database (those listed in dlq.databases, when set); a worker that finds
 * no extension frees its shared-memory slot and exits at once, and the
 * launcher tries that database again DLQ_RECHECK_NAPTIMES naptimes later.
 * A worker whose slot is still there when it exits failed, and is started
 * again after one naptime.  A kill -9 restarts the whole server, launcher
 * included (bgw_restart_time), and the launcher starts the workers again.
 *
 * A worker runs a round every naptime: it returns timed-out replays,
 * expires, requests automatic retries, ticks redrive tasks, purges and
 * alerts; redrive tasks also tick between rounds ("Redrive tasks" below).  Each step is one
 * bounded batch (dlq.batch_size) in a transaction of its own, repeated
 * until a batch comes back short; the statements are the SQL functions
 * dlq.worker_* (dlq--1.0.sql, "Worker", and dlq--1.0--1.1.sql), which take
 * rows with SKIP LOCKED so that operators are never blocked.  A failing
 * batch is reported to the log and to the slot, its transaction aborted,
 * and the worker goes on: the step is then run queue by queue, so that one
 * queue's poison message holds back only that queue (a WARNING names it).
 *
 * Maintenance runs as the extension owner; it runs no user code.  Automatic
 * retries, which fire the triggers of a replay target, run as each queue's
 * retry_role (the role that turned auto_retry on) in a security-restricted
 * operation, after its privileges are checked again: never as the owner.
 * The replays of a redrive task run the same way as the role that started
 * it.
 *
 * A connected worker would make DROP DATABASE (and ALTER DATABASE RENAME,
 * CREATE DATABASE ... TEMPLATE) fail, so at least once a second it checks,
 * without waiting, for the lock those commands hold while they wait for
 * other sessions to leave, and leaves if it is taken.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/vacuum.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#include "dlq.h"
#include "handler.h"
#include "shmem.h"
#include "version.h"

PGDLLEXPORT void dlq_launcher_main(Datum main_arg);
PGDLLEXPORT void dlq_worker_main(Datum main_arg);

/* A database without the extension is looked at again after this many naptimes. */
#define DLQ_RECHECK_NAPTIMES 5

/* The launcher is restarted this many seconds after it dies. */
#define DLQ_LAUNCHER_RESTART_SECS 1

/* Longest sleep of a worker, so that a waiting DROP DATABASE is noticed. */
#define DLQ_MAX_SLEEP_MS 1000

/* Actor recorded in dlq.events for what the worker does. */
#define DLQ_WORKER_ACTOR "dlq worker"

static uint32 dlq_wait_event = 0;

/*
 * The wait event shown in pg_stat_activity while sleeping: a named one
 * where the server supports it (PostgreSQL 17), else "Extension".
 */
static uint32
worker_get_wait_event(const char *name)
{
	if (dlq_wait_event == 0)
	{
#if PG_VERSION_NUM >= 170000
		dlq_wait_event = WaitEventExtensionNew(name);
#else
		dlq_wait_event = PG_WAIT_EXTENSION;
#endif
	}
	return dlq_wait_event;
}

static void
worker_fill_worker(BackgroundWorker *worker, const char *function, const char *type)
{
	memset(worker, 0, sizeof(BackgroundWorker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	strlcpy(worker->bgw_library_name, "dlq", BGW_MAXLEN);
	strlcpy(worker->bgw_function_name, function, BGW_MAXLEN);
	strlcpy(worker->bgw_type, type, BGW_MAXLEN);
}

/* Called from _PG_init while shared_preload_libraries are loaded. */
void
dlq_register_launcher(void)
{
	BackgroundWorker worker;

	worker_fill_worker(&worker, "dlq_launcher_main", "dlq launcher");
	strlcpy(worker.bgw_name, "dlq launcher", BGW_MAXLEN);
	worker.bgw_restart_time = DLQ_LAUNCHER_RESTART_SECS;
	RegisterBackgroundWorker(&worker);
}

/* Is the process that holds this slot alive? Caller holds dlq_shared->lock. */
static bool
worker_slot_alive(DlqWorkerSlot *slot)
{
	return slot->pid != 0 && BackendPidGetProc(slot->pid) != NULL;
}

/* ----------------------------------------------------------------
 * Launcher
 * ----------------------------------------------------------------
 */

typedef struct DlqDatabase
{
	Oid			dboid;			/* hash key */
	char		name[NAMEDATALEN];
	BackgroundWorkerHandle *handle; /* NULL: we started no worker, or it stopped */
	TimestampTz next_start;		/* not before this */
	bool		seen;			/* still wanted in this round */
	bool		warned;			/* could-not-start reported */
} DlqDatabase;

static HTAB *launcher_databases = NULL;
static MemoryContext launcher_round_cxt = NULL;

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	if (dlq_shared->launcher_pid == MyProcPid)
		dlq_shared->launcher_pid = 0;
	LWLockRelease(dlq_shared->lock);
}

/* Is this database named in dlq.databases (or is the list empty)? */
static bool
worker_database_wanted(List *wanted, const char *name)
{
	ListCell   *lc;

	if (wanted == NIL)
		return true;
	foreach(lc, wanted)
		if (strcmp((const char *) lfirst(lc), name) == 0)
			return true;
	return false;
}

/*
 * The databases a worker may run in, as a list of DlqDatabase (only dboid
 * and name set) in launcher_round_cxt.  pg_database is a shared catalog, so
 * the launcher can read it without a database of its own, the way the
 * autovacuum launcher does.
 */
static List *
launcher_scan(void)
{
	List	   *result = NIL;
	List	   *wanted = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext oldcxt;

	oldcxt = MemoryContextSwitchTo(launcher_round_cxt);
	if (dlq_databases != NULL && dlq_databases[0] != '\0' &&
		!SplitIdentifierString(pstrdup(dlq_databases), ',', &wanted))
		wanted = NIL;			/* cannot happen: the check hook refused it */
	MemoryContextSwitchTo(oldcxt);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		DlqDatabase *entry;

		if (!db->datallowconn || db->datistemplate)
			continue;
#ifdef DATCONNLIMIT_INVALID_DB
		if (database_is_invalid_form(db))
			continue;
#endif
		if (!worker_database_wanted(wanted, NameStr(db->datname)))
			continue;

		oldcxt = MemoryContextSwitchTo(launcher_round_cxt);
		entry = palloc0(sizeof(DlqDatabase));
		entry->dboid = db->oid;
		strlcpy(entry->name, NameStr(db->datname), NAMEDATALEN);
		result = lappend(result, entry);
		MemoryContextSwitchTo(oldcxt);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	CommitTransactionCommand();
	return result;
}

static void
launcher_start(DlqDatabase *db, TimestampTz now)
{
	BackgroundWorker worker;
	MemoryContext oldcxt;
	bool		started;

	worker_fill_worker(&worker, "dlq_worker_main", "dlq worker");
	snprintf(worker.bgw_name, BGW_MAXLEN, "dlq worker for database %s", db->name);
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = ObjectIdGetDatum(db->dboid);
	worker.bgw_notify_pid = MyProcPid;

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	started = RegisterDynamicBackgroundWorker(&worker, &db->handle);
	MemoryContextSwitchTo(oldcxt);

	if (started)
	{
		db->warned = false;
		return;
	}
	db->handle = NULL;
	db->next_start = TimestampTzPlusMilliseconds(now, DLQ_RECHECK_NAPTIMES * dlq_naptime);
	if (!db->warned)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the dlq worker for database \"%s\"", db->name),
				 errhint("Raise max_worker_processes; the launcher keeps trying.")));
	db->warned = true;
}

/* Start, restart or leave alone the worker of one wanted database. */
static void
launcher_tend(DlqDatabase *db, TimestampTz now)
{
	DlqWorkerSlot *slot;
	bool		alive;

	if (db->handle != NULL)
	{
		pid_t		pid;
		BgwHandleStatus status = GetBackgroundWorkerPid(db->handle, &pid);

		if (status == BGWH_STARTED || status == BGWH_NOT_YET_STARTED)
			return;

		/*
		 * It stopped.  A worker that found no extension (or a database on
		 * its way out) freed its slot: look again in a few naptimes.  One
		 * whose slot is still there failed: start it again after a naptime.
		 */
		pfree(db->handle);
		db->handle = NULL;
		LWLockAcquire(dlq_shared->lock, LW_SHARED);
		slot = dlq_worker_slot_locked(db->dboid, false);
		LWLockRelease(dlq_shared->lock);
		db->next_start = TimestampTzPlusMilliseconds(now,
													 (slot ? 1 : DLQ_RECHECK_NAPTIMES) * dlq_naptime);
	}

	if (now < db->next_start)
		return;

	/* A worker an earlier launcher started is still at work: leave it be. */
	LWLockAcquire(dlq_shared->lock, LW_SHARED);
	slot = dlq_worker_slot_locked(db->dboid, false);
	alive = slot != NULL && worker_slot_alive(slot);
	LWLockRelease(dlq_shared->lock);
	if (alive)
		return;

	launcher_start(db, now);
}

/*
 * One launcher round: tend every wanted database, stop the workers of
 * databases no longer wanted (dropped, or left out of dlq.databases), and
 * free slots nobody will come back to.
 */
static void
launcher_round(void)
{
	List	   *wanted;
	ListCell   *lc;
	HASH_SEQ_STATUS seq;
	DlqDatabase *db;
	TimestampTz now;

	MemoryContextReset(launcher_round_cxt);
	wanted = launcher_scan();
	now = GetCurrentTimestamp();

	hash_seq_init(&seq, launcher_databases);
	while ((db = hash_seq_search(&seq)) != NULL)
		db->seen = false;

	foreach(lc, wanted)
	{
		DlqDatabase *w = (DlqDatabase *) lfirst(lc);
		bool		found;

		db = hash_search(launcher_databases, &w->dboid, HASH_ENTER, &found);
		if (!found)
		{
			db->handle = NULL;
			db->next_start = 0;
			db->warned = false;
		}
		strlcpy(db->name, w->name, NAMEDATALEN);
		db->seen = true;
		launcher_tend(db, now);
	}

	hash_seq_init(&seq, launcher_databases);
	while ((db = hash_seq_search(&seq)) != NULL)
	{
		if (db->seen)
			continue;
		if (db->handle != NULL)
		{
			TerminateBackgroundWorker(db->handle);
			pfree(db->handle);
		}
		(void) hash_search(launcher_databases, &db->dboid, HASH_REMOVE, NULL);
	}

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < DLQ_MAX_DATABASES; i++)
	{
		DlqWorkerSlot *slot = &dlq_shared->slots[i];

		if (slot->dboid != InvalidOid &&
			hash_search(launcher_databases, &slot->dboid, HASH_FIND, NULL) == NULL &&
			!worker_slot_alive(slot))
			memset(slot, 0, sizeof(DlqWorkerSlot));
	}
	LWLockRelease(dlq_shared->lock);
}

void
dlq_launcher_main(Datum main_arg)
{
	HASHCTL		ctl;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* No database: only shared catalogs, which is all the launcher reads. */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	dlq_shared->launcher_pid = MyProcPid;
	LWLockRelease(dlq_shared->lock);
	before_shmem_exit(launcher_detach, (Datum) 0);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(DlqDatabase);
	launcher_databases = hash_create("dlq launcher databases", 64, &ctl,
									 HASH_ELEM | HASH_BLOBS);
	launcher_round_cxt = AllocSetContextCreate(TopMemoryContext,
											   "dlq launcher round",
											   ALLOCSET_DEFAULT_SIZES);

	ereport(LOG, (errmsg("dlq launcher started")));

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		launcher_round();

		/* A worker that starts or stops sets our latch (bgw_notify_pid). */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 dlq_naptime, worker_get_wait_event("DlqLauncherMain"));
		ResetLatch(MyLatch);
	}
}

/* ----------------------------------------------------------------
 * Worker
 * ----------------------------------------------------------------
 */

/* The worker's statements, prepared once and kept. */
typedef enum DlqPlanId
{
	DLQ_PLAN_CHECK,
	DLQ_PLAN_RECOVER,
	DLQ_PLAN_EXPIRE,
	DLQ_PLAN_CAP,
	DLQ_PLAN_STEP_QUEUES,
	DLQ_PLAN_RETRY_DUE,
	DLQ_PLAN_RETRY_QUEUE,
	DLQ_PLAN_RETRY,
	DLQ_PLAN_RETRY_AUDIT,
	DLQ_PLAN_RETRY_DEFER,
	DLQ_PLAN_RETRY_OUTCOME,
	DLQ_PLAN_RETRY_RESUME,
	DLQ_PLAN_REDRIVE_DUE,
	DLQ_PLAN_REDRIVE_TAKE,
	DLQ_PLAN_REDRIVE,
	DLQ_PLAN_REDRIVE_DONE,
	DLQ_PLAN_REDRIVE_PAUSE,
	DLQ_PLAN_REDRIVE_FAIL,
	DLQ_PLAN_ROTATE,
	DLQ_PLAN_PURGE,
	DLQ_PLAN_PURGE_EVENTS,
	DLQ_PLAN_ALERT,
	DLQ_PLAN_LIVE_DEAD,
	DLQ_NUM_PLANS
} DlqPlanId;

typedef struct DlqPlanDef
{
	const char *what;			/* for pg_stat_activity and error reports */
	const char *sql;			/* NULL: built at run time */
	int			nargs;
	Oid			argtypes[5];

	/*
	 * Steps that can be run for one queue (their last argument, NULL for
	 * every queue): the states of the messages they act on, in dlq.counts.
	 */
	const char *statuses;
} DlqPlanDef;

static const DlqPlanDef dlq_plan_defs[DLQ_NUM_PLANS] = {
	[DLQ_PLAN_CHECK] = {"checking the extension",
		"SELECT e.extowner, n.nspname,"
		"       pg_catalog.to_regprocedure(pg_catalog.quote_ident(n.nspname)"
		"                                  || '.dlq_reprocess(bigint[],boolean)') IS NOT NULL"
		"       OR pg_catalog.to_regprocedure(pg_catalog.quote_ident(n.nspname)"
		"                                  || '.dlq_reprocess(bigint[],boolean,text,text)') IS NOT NULL"
		"  FROM pg_catalog.pg_extension e"
		"  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
		" WHERE e.extname = 'dlq'",
	0, {InvalidOid}},
	[DLQ_PLAN_RECOVER] = {"returning timed-out replays",
		"SELECT dlq.worker_recover($1, $2 * interval '1 second', $3, $4, $5)",
		5, {INT4OID, FLOAT8OID, TEXTOID, BOOLOID, TEXTOID},
	"{replaying}"},
	[DLQ_PLAN_EXPIRE] = {"expiring messages",
		"SELECT dlq.worker_expire($1, $2, $3)",
		3, {INT4OID, TEXTOID, TEXTOID},
	"{pending}"},
	[DLQ_PLAN_CAP] = {"expiring messages beyond max_messages",
		"SELECT dlq.worker_cap($1, $2, $3)",
		3, {INT4OID, TEXTOID, TEXTOID},
	"{pending,review}"},
	[DLQ_PLAN_STEP_QUEUES] = {"finding the queues of a step",
		"SELECT queue FROM dlq.counts WHERE status = ANY ($1::dlq.status[])"
		" GROUP BY queue HAVING sum(n) > 0 ORDER BY queue",
	1, {TEXTOID}},
	[DLQ_PLAN_RETRY_DUE] = {"finding messages due for a retry",
		"SELECT queue, message_ids FROM dlq.worker_retry_due($1)",
	1, {INT4OID}},
	[DLQ_PLAN_RETRY_QUEUE] = {"reading a queue's retry role",
		"SELECT retry_role, replay_target, replay_handler FROM dlq.queues"
		" WHERE queue = $1 AND auto_retry AND NOT paused",
	1, {TEXTOID}},
	[DLQ_PLAN_RETRY] = {"requesting automatic retries",
		NULL,
	1, {INT8ARRAYOID}},
	[DLQ_PLAN_RETRY_AUDIT] = {"auditing automatic retries",
		"INSERT INTO dlq.events"
		"  (actor, kind, queue, request_id, message_count, message_ids, detail)"
		" VALUES ($3, 'retried', $2, ($4 ->> 'request_id')::uuid, pg_catalog.cardinality($1),"
		"  CASE WHEN pg_catalog.cardinality($1) <= " CppAsString2(DLQ_AUDIT_MAX_IDS) " THEN $1 END, $4)",
	4, {INT8ARRAYOID, TEXTOID, TEXTOID, JSONBOID}},
	[DLQ_PLAN_RETRY_DEFER] = {"deferring retries",
		"SELECT dlq.worker_retry_defer($1)",
	1, {INT8ARRAYOID}},
	[DLQ_PLAN_RETRY_OUTCOME] = {"counting the outcome of automatic retries",
		"SELECT dlq.worker_retry_outcome($1, $2, $3)",
	3, {TEXTOID, JSONBOID, TEXTOID}},
	[DLQ_PLAN_RETRY_RESUME] = {"resuming stopped automatic retries",
		"SELECT dlq.worker_retry_resume($1)",
	1, {TEXTOID}},
	[DLQ_PLAN_REDRIVE_DUE] = {"finding redrive tasks",
		"SELECT task_id, due_at FROM dlq.worker_redrive_due()",
	0, {InvalidOid}},
	[DLQ_PLAN_REDRIVE_TAKE] = {"taking the candidates of a redrive task",
		"SELECT queue, created_by, replay_target, force, reason, ticket, message_ids,"
		"       replay_handler"
		"  FROM dlq.worker_redrive_take($1, $2, $3)",
	3, {INT8OID, INT4OID, TEXTOID}},
	[DLQ_PLAN_REDRIVE] = {"replaying the messages of a redrive task",
		NULL,
	4, {INT8ARRAYOID, BOOLOID, TEXTOID, TEXTOID}},
	[DLQ_PLAN_REDRIVE_DONE] = {"counting a redrive task's replay",
		"SELECT dlq.worker_redrive_done($1, $2, $3, $4)",
	4, {INT8OID, INT8ARRAYOID, JSONBOID, TEXTOID}},
	[DLQ_PLAN_REDRIVE_PAUSE] = {"pausing a redrive task",
		"SELECT dlq.redrive_pause($1, $2, $3)",
	3, {INT8OID, TEXTOID, TEXTOID}},
	[DLQ_PLAN_REDRIVE_FAIL] = {"ending a redrive task that failed",
		"SELECT dlq.redrive_end($1, 'failed', $2, $3)",
	3, {INT8OID, TEXTOID, TEXTOID}},
	[DLQ_PLAN_ROTATE] = {"turning the rings of closed and archived messages",
		"SELECT (r ->> 'purged')::int8"
		"  FROM dlq.worker_rotate($1, $2 * interval '1 second',"
		"                         archive_every => $3 * interval '1 second') r",
	3, {TEXTOID, FLOAT8OID, FLOAT8OID}},
	[DLQ_PLAN_PURGE] = {"purging messages",
		"SELECT dlq.worker_purge($1, $2, $3)",
		3, {INT4OID, TEXTOID, TEXTOID},
	"{resolved,expired}"},
	[DLQ_PLAN_PURGE_EVENTS] = {"purging audit events",
		"SELECT dlq.worker_purge_events($1, $2 * interval '1 second', $3)",
	3, {INT4OID, FLOAT8OID, TEXTOID}},
	[DLQ_PLAN_LIVE_DEAD] = {"looking at dead rows of the live partition",
		"SELECT CASE WHEN x.dead >= GREATEST(" CppAsString2(DLQ_VACUUM_LIVE_MIN_DEAD) ", x.live / 5)"
		"  THEN x.dead ELSE 0 END"
		"  FROM (SELECT pg_catalog.pg_stat_get_dead_tuples(c.oid) AS dead,"
		"               pg_catalog.pg_stat_get_live_tuples(c.oid) AS live"
		"          FROM pg_catalog.pg_class c"
		"         WHERE c.oid = pg_catalog.to_regclass('dlq.messages_live')) x",
	0, {InvalidOid}},
	[DLQ_PLAN_ALERT] = {"raising alerts",
		"SELECT alert_id, severity, message FROM dlq.worker_alert($1)",
	1, {TEXTOID}},
};

static SPIPlanPtr dlq_plans[DLQ_NUM_PLANS];

/* What the check at the start of a round found. */
typedef struct DlqWorkerState
{
	Oid			owner;			/* extension owner: maintenance runs as it */
	char	   *schema;			/* extension schema, in worker_cxt */
	bool		has_reprocess;	/* dlq_reprocess exists (replay installed) */
	bool		schema_current; /* the schema is this library's version */
	bool		schema_warned;	/* an old schema reported */
	bool		role_warned;	/* the ignored dlq.worker_role reported */
} DlqWorkerState;

/* An alert raised by DLQ_PLAN_ALERT, for the server log once committed. */
typedef struct DlqAlert
{
	int64		alert_id;		/* event_id of its 'alert' event */
	char	   *severity;
	char	   *message;
} DlqAlert;

/* A queue's messages due for a retry. */
typedef struct DlqRetryGroup
{
	char	   *queue;
	Datum		ids;			/* bigint[] */
} DlqRetryGroup;

static DlqWorkerSlot *worker_slot = NULL;
static char *worker_dbname = NULL;
static bool worker_free_slot_on_exit = false;
static MemoryContext worker_cxt = NULL;		/* lives as long as the worker */
static MemoryContext round_cxt = NULL;	/* reset every round */
static DlqWorkerState worker_state;
static List *retry_groups = NIL;	/* result of DLQ_PLAN_RETRY_DUE */
static List *step_queues = NIL; /* result of DLQ_PLAN_STEP_QUEUES */
static List *alert_rows = NIL;	/* result of DLQ_PLAN_ALERT: DlqAlert */
static TimestampTz last_unclaimed_check = 0;

static void
worker_detach(int code, Datum arg)
{
	if (worker_slot == NULL)
		return;
	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	if (worker_slot->dboid == MyDatabaseId && worker_slot->pid == MyProcPid)
	{
		if (worker_free_slot_on_exit)
			memset(worker_slot, 0, sizeof(DlqWorkerSlot));
		else
			worker_slot->pid = 0;
	}
	LWLockRelease(dlq_shared->lock);
}

/* Leave without an error: the launcher sees the freed slot and looks again later. */
static void
worker_leave(const char *why)
{
	if (worker_slot != NULL)
		ereport(LOG,
				(errmsg("dlq worker for database \"%s\" stopping: %s",
						worker_dbname, why)));
	else
		elog(DEBUG1, "dlq worker for database \"%s\" not needed: %s",
			 worker_dbname, why);
	worker_free_slot_on_exit = true;
	proc_exit(0);
}

static void
worker_record_error(const char *what, const char *message)
{
	if (worker_slot == NULL)
		return;
	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_slot->errors++;
	worker_slot->last_error_at = GetCurrentTimestamp();
	snprintf(worker_slot->last_error, DLQ_LAST_ERROR_LEN, "%s: %s", what, message);
	LWLockRelease(dlq_shared->lock);
}

static SPIPlanPtr
worker_plan(DlqPlanId id)
{
	if (dlq_plans[id] == NULL)
	{
		const DlqPlanDef *def = &dlq_plan_defs[id];
		const char *sql = def->sql;
		SPIPlanPtr	plan;

		/*
		 * The retry is requested through the API, so that it is exactly what
		 * an operator's dlq_reprocess would do, and audited next to it.
		 */
		if (id == DLQ_PLAN_RETRY)
			sql = psprintf("SELECT %s.dlq_reprocess($1, false)",
						   quote_identifier(worker_state.schema));
		else if (id == DLQ_PLAN_REDRIVE)
			sql = psprintf("SELECT %s.dlq_reprocess($1, $2, $3, $4)",
						   quote_identifier(worker_state.schema));

		plan = SPI_prepare(sql, def->nargs, (Oid *) def->argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		dlq_plans[id] = plan;
	}
	return dlq_plans[id];
}

/*
 * Keep the alerts DLQ_PLAN_ALERT raised, to be logged once their
 * transaction has committed (an alert that rolled back was never sent).
 */
static void
worker_keep_alerts(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(round_cxt);

	alert_rows = NIL;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		DlqAlert   *a = palloc(sizeof(DlqAlert));
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		a->alert_id = isnull ? 0 : DatumGetInt64(id);
		a->severity = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		a->message = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
		alert_rows = lappend(alert_rows, a);
	}
	MemoryContextSwitchTo(oldcxt);
}

/* Keep the rows of DLQ_PLAN_RETRY_DUE for the round. */
static void
worker_keep_retry_groups(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(round_cxt);

	retry_groups = NIL;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		DlqRetryGroup *g = palloc(sizeof(DlqRetryGroup));
		bool		isnull;
		Datum		ids;

		g->queue = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		ids = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		g->ids = PointerGetDatum(DatumGetArrayTypePCopy(ids));
		retry_groups = lappend(retry_groups, g);
	}
	MemoryContextSwitchTo(oldcxt);
}

/* Keep the rows of DLQ_PLAN_STEP_QUEUES for the round. */
static void
worker_keep_step_queues(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(round_cxt);

	step_queues = NIL;
	for (uint64 i = 0; i < SPI_processed; i++)
		step_queues = lappend(step_queues,
							  SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	MemoryContextSwitchTo(oldcxt);
}

/* Keep what DLQ_PLAN_CHECK found. */
static void
worker_keep_check(void)
{
	bool		isnull;
	char	   *schema;

	worker_state.owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull));
	schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	worker_state.has_reprocess = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc, 3, &isnull));
	if (worker_state.schema == NULL || strcmp(worker_state.schema, schema) != 0)
	{
		/* Another schema (dropped and created again): two plans name it. */
		if (dlq_plans[DLQ_PLAN_RETRY] != NULL)
		{
			SPI_freeplan(dlq_plans[DLQ_PLAN_RETRY]);
			dlq_plans[DLQ_PLAN_RETRY] = NULL;
		}
		if (dlq_plans[DLQ_PLAN_REDRIVE] != NULL)
		{
			SPI_freeplan(dlq_plans[DLQ_PLAN_REDRIVE]);
			dlq_plans[DLQ_PLAN_REDRIVE] = NULL;
		}
		worker_state.schema = MemoryContextStrdup(worker_cxt, schema);
	}

	/* The steps use objects of this version: wait for ALTER EXTENSION UPDATE. */
	worker_state.schema_current = dlq_schema_current();
	if (!worker_state.schema_current && !worker_state.schema_warned)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("dlq worker for database \"%s\" waits for the extension to be updated",
						worker_dbname),
				 errdetail("The library is version %s; the extension in this database is older.",
						   DLQ_EXTVERSION),
				 errhint("Run ALTER EXTENSION dlq UPDATE.")));
	worker_state.schema_warned = !worker_state.schema_current;

	/*
	 * 1.0's dlq.worker_role ran every queue's retries as one role; each
	 * queue's retry_role does now.
	 */
	if (dlq_worker_role != NULL && dlq_worker_role[0] != '\0')
	{
		if (!worker_state.role_warned)
			ereport(WARNING,
					(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
					 errmsg("dlq.worker_role is ignored"),
					 errdetail("Automatic retries run as the role that turned auto_retry on for the queue (dlq.queues.retry_role)."),
					 errhint("Remove the setting.")));
		worker_state.role_warned = true;
	}
	else
		worker_state.role_warned = false;
}

/*
 * Does a DROP DATABASE, ALTER DATABASE or CREATE DATABASE ... TEMPLATE of
 * this database wait for us to leave?  They hold a lock on the database
 * that conflicts with the one a connecting session takes.  Caller is in a
 * transaction; the lock, if we get it, goes with it.
 */
static bool
worker_database_claimed(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	return LockAcquire(&tag, RowExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Run one transaction of the worker: body(arg) inside it, connected to SPI,
 * with a snapshot.  Returns false when it failed: the error is then logged,
 * as a WARNING naming the queue when the work was for one queue, recorded in
 * the slot, and the transaction aborted; the worker goes on.
 */
/*
 * In PG_CATCH of a step: report the error (a warning naming the queue, when
 * the step was for one), record it in the slot and abort the transaction.
 */
static void
worker_txn_failed(const char *what, const char *queue)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(worker_cxt);
	edata = CopyErrorData();
	if (queue == NULL)
		EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	if (queue == NULL)
		worker_record_error(what, edata->message);
	else
	{
		char		label[DLQ_LAST_ERROR_LEN];

		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("%s for queue \"%s\" failed: %s", what, queue, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 errhint("The worker goes on with the other queues and tries this one again next round.")));
		snprintf(label, sizeof(label), "%s for queue \"%s\"", what, queue);
		worker_record_error(label, edata->message);
	}
	FreeErrorData(edata);
}

static bool
worker_txn(const char *what, const char *queue, void (*body) (void *), void *arg)
{
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, what);
		body(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		worker_txn_failed(what, queue);
		ok = false;
	}
	PG_END_TRY();

	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);
	MemoryContextSwitchTo(round_cxt);
	return ok;
}

/*
 * Execute one of the worker's plans inside worker_txn, as role
 * (InvalidOid: as we are); the rows are in SPI_tuptable.
 */
static void
worker_exec(DlqPlanId id, Oid role, Datum *values, const char *nulls)
{
	Oid			save_user;
	int			save_sec;
	int			ret;

	GetUserIdAndSecContext(&save_user, &save_sec);
	if (OidIsValid(role))
		SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	ret = SPI_execute_plan(worker_plan(id), values, nulls, false, 0);
	SetUserIdAndSecContext(save_user, save_sec);
	if (ret != SPI_OK_SELECT && ret != SPI_OK_INSERT)
		elog(ERROR, "%s failed: %s", dlq_plan_defs[id].what, SPI_result_code_string(ret));
}

/*
 * Execute a plan that runs a role's code (automatic retries, redrive
 * ticks: dlq_reprocess, which calls the replay handler as its owner or
 * fires the replay target's triggers as the table's owner, each with a
 * search_path of their own) as that role, the way pg_cron runs a job as its
 * owner: in a security-restricted operation, undone on every path.
 */
static void
worker_exec_as_role(DlqPlanId id, Oid role, Datum *values, const char *nulls)
{
	Oid			save_user;
	int			save_sec;

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		worker_exec(id, InvalidOid, values, nulls);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_user, save_sec);
	}
	PG_END_TRY();
}

/* One statement of the worker in a transaction of its own (worker_run). */
typedef struct DlqRun
{
	DlqPlanId	id;
	Oid			role;
	Datum	   *values;
	const char *nulls;
	int64		result;			/* bigint of the first column, 0 without */
	const char *leave;			/* DLQ_PLAN_CHECK: why the worker must leave */
} DlqRun;

static void worker_keep_redrive_due(void);

static void
worker_run_body(void *arg)
{
	DlqRun	   *run = (DlqRun *) arg;

	if (run->id == DLQ_PLAN_CHECK && worker_database_claimed())
	{
		run->leave = "the database is being dropped or changed";
		return;
	}
	worker_exec(run->id, run->role, run->values, run->nulls);
	if (run->id == DLQ_PLAN_CHECK)
	{
		if (SPI_processed == 0)
			run->leave = "extension \"dlq\" is not installed";
		else
			worker_keep_check();
	}
	else if (run->id == DLQ_PLAN_RETRY_DUE)
		worker_keep_retry_groups();
	else if (run->id == DLQ_PLAN_REDRIVE_DUE)
		worker_keep_redrive_due();
	else if (run->id == DLQ_PLAN_STEP_QUEUES)
		worker_keep_step_queues();
	else if (run->id == DLQ_PLAN_ALERT)
		worker_keep_alerts();
	else if (SPI_processed > 0)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		run->result = isnull ? 0 : DatumGetInt64(d);
	}
}

static void worker_progress_enter(DlqPlanId id, const char *queue);

/*
 * Run one statement in a transaction of its own, as role, and return the
 * bigint in its first column (0 without a row), or -1 when it failed (see
 * worker_txn; queue names the queue it was for, or is NULL).
 * DLQ_PLAN_CHECK, DLQ_PLAN_RETRY_DUE and DLQ_PLAN_STEP_QUEUES keep their
 * rows instead.
 */
static int64
worker_run(DlqPlanId id, Oid role, Datum *values, const char *nulls, const char *queue)
{
	DlqRun		run = {id, role, values, nulls, 0, NULL};
	bool		ok;

	worker_progress_enter(id, queue);
	ok = worker_txn(dlq_plan_defs[id].what, queue, worker_run_body, &run);
	if (run.leave != NULL)
		worker_leave(run.leave);
	return ok ? run.result : -1;
}

/* Between batches: stop promptly on SIGTERM, and take in a reload. */
static void
worker_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* ----------------------------------------------------------------
 * Worker throttle and progress
 *
 * Like autovacuum's vacuum_cost_limit and vacuum_cost_delay: every message
 * the worker handles (expires, purges, returns, retries; every audit event
 * it purges) costs 1, and when it has spent dlq.worker_cost_limit it sleeps
 * dlq.worker_cost_delay, so that a backlog of millions goes out at a pace
 * that leaves the server's throughput to its clients.  A batch is then at
 * most dlq.worker_cost_limit messages, so that no transaction outgrows the
 * budget.  The step under way, its queue and how far it got are kept in
 * the slot for dlq.worker_status().
 * ----------------------------------------------------------------
 */

/* Cost spent since the last throttle sleep. */
static int64 throttle_balance = 0;

/* When worker_leave_if_claimed last looked. */
static TimestampTz last_claimed_check = 0;

static bool
worker_throttled(void)
{
	return dlq_worker_cost_limit > 0 && dlq_worker_cost_delay > 0;
}

/* The most messages a batch may take now. */
static int
worker_batch_limit(void)
{
	if (worker_throttled())
		return Min(dlq_batch_size, dlq_worker_cost_limit);
	return dlq_batch_size;
}

/*
 * The step a plan belongs to, as dlq.worker_status() shows it; NULL for a
 * plan that serves the step under way.
 */
static const char *
worker_step_name(DlqPlanId id)
{
	switch (id)
	{
		case DLQ_PLAN_CHECK:
			return "check";
		case DLQ_PLAN_RECOVER:
			return "recover";
		case DLQ_PLAN_EXPIRE:
			return "expire";
		case DLQ_PLAN_CAP:
			return "cap";
		case DLQ_PLAN_STEP_QUEUES:
			return NULL;
		case DLQ_PLAN_RETRY_DUE:
		case DLQ_PLAN_RETRY_QUEUE:
		case DLQ_PLAN_RETRY:
		case DLQ_PLAN_RETRY_AUDIT:
		case DLQ_PLAN_RETRY_DEFER:
		case DLQ_PLAN_RETRY_OUTCOME:
		case DLQ_PLAN_RETRY_RESUME:
			return "retry";
		case DLQ_PLAN_REDRIVE_DUE:
		case DLQ_PLAN_REDRIVE_TAKE:
		case DLQ_PLAN_REDRIVE:
		case DLQ_PLAN_REDRIVE_DONE:
		case DLQ_PLAN_REDRIVE_PAUSE:
		case DLQ_PLAN_REDRIVE_FAIL:
			return "redrive";
		case DLQ_PLAN_ROTATE:
			return "rotate";
		case DLQ_PLAN_PURGE:
			return "purge";
		case DLQ_PLAN_PURGE_EVENTS:
			return "purge_events";
		case DLQ_PLAN_ALERT:
			return "alert";
		case DLQ_PLAN_LIVE_DEAD:
			return "vacuum";
		default:
			return dlq_plan_defs[id].what;
	}
}

/*
 * Show in the slot that the worker is at the step of plan id, for one
 * queue or (NULL) every queue.  A new step starts its clock and count.
 */
static void
worker_progress_enter(DlqPlanId id, const char *queue)
{
	const char *step = worker_step_name(id);

	if (worker_slot == NULL || step == NULL)
		return;
	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	if (strncmp(worker_slot->step, step, DLQ_STEP_LEN - 1) != 0)
	{
		strlcpy(worker_slot->step, step, DLQ_STEP_LEN);
		worker_slot->step_started_at = GetCurrentTimestamp();
		worker_slot->step_done = 0;
	}
	strlcpy(worker_slot->step_queue, queue ? queue : "", NAMEDATALEN);
	LWLockRelease(dlq_shared->lock);
}

/* A batch of the step under way handled n messages; the worker is alive. */
static void
worker_progress_done(int64 n)
{
	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_slot->step_done += n;
	worker_slot->last_heartbeat = GetCurrentTimestamp();
	LWLockRelease(dlq_shared->lock);
}

/* No step under way (caller holds dlq_shared->lock). */
static void
worker_progress_clear(void)
{
	worker_slot->step[0] = '\0';
	worker_slot->step_queue[0] = '\0';
	worker_slot->step_started_at = 0;
	worker_slot->step_done = 0;
}

/*
 * The round is over: no step under way, and its throttle sleep becomes the
 * last round's.  The naptime is rest enough, so the balance starts again.
 */
static void
worker_progress_end(void)
{
	throttle_balance = 0;
	if (worker_slot == NULL)
		return;
	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_progress_clear();
	worker_slot->last_throttle_sleep_us = worker_slot->throttle_sleep_us;
	worker_slot->throttle_sleep_us = 0;
	LWLockRelease(dlq_shared->lock);
}

/*
 * Leave when a DROP DATABASE (or the like) waits for us; looked at no more
 * than once per DLQ_MAX_SLEEP_MS, so that a long step, throttled or not,
 * does not keep it waiting (it gives up after 5 s).
 */
static void
worker_leave_if_claimed(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		claimed;

	if (!TimestampDifferenceExceeds(last_claimed_check, now, DLQ_MAX_SLEEP_MS))
		return;
	last_claimed_check = now;
	StartTransactionCommand();
	claimed = worker_database_claimed();
	CommitTransactionCommand();
	MemoryContextSwitchTo(round_cxt);
	if (claimed)
		worker_leave("the database is being dropped or changed");
}

/*
 * Charge cost to the budget, and sleep when it is used up: as
 * vacuum_delay_point does, dlq.worker_cost_delay in proportion to the cost
 * spent, at most four times it.  The sleep wakes for SIGTERM, a reload
 * (whose new values apply at once: a shorter delay ends it sooner, a
 * throttle turned off ends it) and postmaster death.
 */
static void
worker_throttle(int64 cost)
{
	TimestampTz start;
	int64		msec;
	int64		slept;

	if (!worker_throttled())
	{
		throttle_balance = 0;
		return;
	}
	throttle_balance += cost;
	if (throttle_balance < dlq_worker_cost_limit)
		return;

	msec = (int64) dlq_worker_cost_delay * throttle_balance / dlq_worker_cost_limit;
	msec = Min(msec, 4 * (int64) dlq_worker_cost_delay);
	throttle_balance = 0;

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_slot->throttled = true;
	LWLockRelease(dlq_shared->lock);

	start = GetCurrentTimestamp();
	for (;;)
	{
		long		left;

		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
											   TimestampTzPlusMilliseconds(start, msec));
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(left, DLQ_MAX_SLEEP_MS),
						 worker_get_wait_event("DlqWorkerMain"));
		ResetLatch(MyLatch);
		worker_interrupts();
		worker_leave_if_claimed();
		if (!worker_throttled())
			break;
		msec = Min(msec, 4 * (int64) dlq_worker_cost_delay);
	}
	slept = GetCurrentTimestamp() - start;

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_slot->throttled = false;
	worker_slot->throttle_sleep_us += Max(slept, 0);
	worker_slot->last_heartbeat = GetCurrentTimestamp();
	LWLockRelease(dlq_shared->lock);
}

/*
 * Repeat a step in batches until one comes back short; returns how many
 * messages it handled, and sets *failed when a batch failed.
 */
static int64
worker_batches(DlqPlanId id, Datum *values, const char *nulls, const char *queue,
			   bool *failed)
{
	int64		total = 0;

	*failed = false;
	for (;;)
	{
		int			limit = worker_batch_limit();
		int64		n;

		values[0] = Int32GetDatum(limit);
		n = worker_run(id, worker_state.owner, values, nulls, queue);
		if (n < 0)
		{
			*failed = true;
			break;
		}
		total += n;
		worker_progress_done(n);
		worker_throttle(n);
		if (n < limit)
			break;

		worker_interrupts();
		worker_leave_if_claimed();
	}
	return total;
}

/*
 * A maintenance step over every queue, in batches.  When a batch fails, one
 * queue's message may be the cause (a trigger, a value out of range): the
 * step is then run queue by queue, each in batches of its own, so that the
 * other queues are still served in this round and only the failing one is
 * held back, with a warning naming it.
 */
static int64
worker_repeat(DlqPlanId id, Datum *values)
{
	const DlqPlanDef *def = &dlq_plan_defs[id];
	char		nulls[lengthof(def->argtypes)];
	int			queue_arg = def->nargs - 1;
	bool		failed;
	int64		total;
	ListCell   *lc;

	memset(nulls, ' ', sizeof(nulls));
	if (def->statuses != NULL)
		nulls[queue_arg] = 'n';
	total = worker_batches(id, values, nulls, NULL, &failed);
	if (!failed || def->statuses == NULL)
		return total;

	{
		Datum		statuses = CStringGetTextDatum(def->statuses);

		if (worker_run(DLQ_PLAN_STEP_QUEUES, worker_state.owner, &statuses, NULL, NULL) < 0)
			return total;
	}
	foreach(lc, step_queues)
	{
		const char *queue = (const char *) lfirst(lc);

		values[queue_arg] = CStringGetTextDatum(queue);
		nulls[queue_arg] = ' ';
		total += worker_batches(id, values, nulls, queue, &failed);
		worker_interrupts();
	}
	return total;
}

/*
 * Why may role not run the automatic retries of a queue with this replay
 * target or replay handler (InvalidOid: none)?  NULL when it may.  Checked
 * at every run: the role must still exist, be a member of dlq_operator and
 * have INSERT on the target, or EXECUTE on the handler, which must still
 * exist (handler.c).  Logging in is not needed.
 */
static const char *
worker_retry_refusal(Oid role, Oid target, Oid handler)
{
	Oid			operator_role;

	if (!OidIsValid(role))
		return "no role turned them on since version 1.0";
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
		return psprintf("role with OID %u, which turned them on, no longer exists", role);
	operator_role = get_role_oid("dlq_operator", true);
	if (!OidIsValid(operator_role) || !has_privs_of_role(role, operator_role))
		return psprintf("role \"%s\" is no longer a member of dlq_operator",
						GetUserNameFromId(role, false));
	if (OidIsValid(target) && pg_class_aclcheck(target, role, ACL_INSERT) != ACLCHECK_OK)
		return psprintf("role \"%s\" lacks INSERT on table %s",
						GetUserNameFromId(role, false),
						DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(target))));
	if (OidIsValid(handler))
		return dlq_handler_refusal(handler, role);
	return NULL;
}

/* The automatic retries of one queue (worker_retry). */
typedef struct DlqRetryRun
{
	DlqRetryGroup *group;
	int64		retried;
} DlqRetryRun;

/*
 * Retry one queue's due messages through dlq_reprocess, as the queue's
 * retry_role, the way pg_cron runs a job as its owner: the user switched
 * with SECURITY_RESTRICTED_OPERATION, so that nothing a trigger of the
 * replay target does outlives the call, and switched back on every path.
 * A role that may no longer do it has its queue's retries put off by one
 * backoff step, with a warning.
 */
static void
worker_retry_body(void *arg)
{
	DlqRetryRun *run = (DlqRetryRun *) arg;
	DlqRetryGroup *g = run->group;
	Datum		values[4];
	bool		isnull;
	Datum		d;
	Oid			role;
	Oid			target;
	Oid			handler;
	const char *why;

	values[0] = CStringGetTextDatum(g->queue);
	worker_exec(DLQ_PLAN_RETRY_QUEUE, worker_state.owner, values, NULL);
	if (SPI_processed == 0)
		return;					/* auto_retry turned off, or paused, meanwhile */
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	role = isnull ? InvalidOid : DatumGetObjectId(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	target = isnull ? InvalidOid : DatumGetObjectId(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	handler = isnull ? InvalidOid : DatumGetObjectId(d);

	values[0] = g->ids;
	why = worker_retry_refusal(role, target, handler);
	if (why != NULL)
	{
		char		label[DLQ_LAST_ERROR_LEN];

		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("automatic retries of queue \"%s\" skipped: %s", g->queue, why),
				 errdetail("Automatic retries run as the role that turned auto_retry on, while it may write to the queue's replay target or execute its replay handler."),
				 errhint("An operator turns them on again with dlq_configure('%s', auto_retry => true).",
						 g->queue)));
		snprintf(label, sizeof(label), "automatic retries of queue \"%s\" skipped", g->queue);
		worker_record_error(label, why);
		worker_exec(DLQ_PLAN_RETRY_DEFER, worker_state.owner, values, NULL);
		return;
	}

	worker_exec_as_role(DLQ_PLAN_RETRY, role, values, NULL);

	/* Audited as the worker's, next to dlq_reprocess's own events. */
	values[3] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	values[1] = CStringGetTextDatum(g->queue);
	values[2] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	worker_exec(DLQ_PLAN_RETRY_AUDIT, worker_state.owner, values, NULL);

	/* Early stop: too many of them failed, and the queue's retries stop. */
	values[0] = values[1];
	values[1] = values[3];
	worker_exec(DLQ_PLAN_RETRY_OUTCOME, worker_state.owner, values, NULL);
	run->retried = ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(g->ids)),
								  ARR_DIMS(DatumGetArrayTypeP(g->ids)));
}

/*
 * Automatic retries: each queue's due messages in a transaction of its
 * own, as that queue's retry_role.  A retry that fails (a paused queue, no
 * live consumer, an error in a trigger) is logged with the queue's name and
 * puts those messages off by one backoff step; the other queues go on.
 */
static int64
worker_retry(void)
{
	int64		total = 0;
	ListCell   *lc;
	Datum		values[1];

	if (!worker_state.has_reprocess)
		return 0;

	/* Queues whose retries stopped early and are due to resume. */
	values[0] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	(void) worker_run(DLQ_PLAN_RETRY_RESUME, worker_state.owner, values, NULL, NULL);

	values[0] = Int32GetDatum(dlq_batch_size);
	if (worker_run(DLQ_PLAN_RETRY_DUE, worker_state.owner, values, NULL, NULL) < 0)
		return 0;

	foreach(lc, retry_groups)
	{
		DlqRetryGroup *g = (DlqRetryGroup *) lfirst(lc);
		DlqRetryRun run = {g, 0};

		worker_progress_enter(DLQ_PLAN_RETRY, g->queue);
		if (worker_txn(dlq_plan_defs[DLQ_PLAN_RETRY].what, g->queue,
					   worker_retry_body, &run))
			total += run.retried;
		else
		{
			values[0] = g->ids;
			(void) worker_run(DLQ_PLAN_RETRY_DEFER, worker_state.owner, values, NULL,
							  g->queue);
		}
		worker_progress_done(run.retried);
		worker_throttle(run.retried);
		worker_interrupts();
	}
	return total;
}

/* ----------------------------------------------------------------
 * Redrive tasks
 *
 * The worker ticks every running task of dlq.redrive_tasks (redrive.c) at
 * most every DLQ_REDRIVE_TICK_MS, in the round and between rounds, so that
 * a task's rate does not depend on dlq.naptime; the rest of the round runs
 * no more often for it.  A tick is one transaction: dlq.worker_redrive_take
 * takes the candidates the task's token bucket allows (at most
 * dlq.batch_size), dlq_reprocess replays them as the role that started the
 * task, switched like the automatic retries, after its privileges are
 * checked again (worker_retry_refusal), and dlq.worker_redrive_done moves
 * the task's cursor and counters: a restart neither skips nor repeats a
 * message.  A replay that fails as a whole (a paused queue, no live
 * consumer, an error) is rolled back to a subtransaction and pauses the
 * task for the queue's backoff; a role that may no longer replay ends it as
 * failed.  Not throttled by dlq.worker_cost_limit: its rate is its own
 * throttle.
 * ----------------------------------------------------------------
 */

/* The longest wait between two ticks of a running task. */
#define DLQ_REDRIVE_TICK_MS 100

/* A task from DLQ_PLAN_REDRIVE_DUE. */
typedef struct DlqRedriveDue
{
	int64		task_id;
	TimestampTz due_at;
} DlqRedriveDue;

/* One tick of one task (worker_redrive_body). */
typedef struct DlqRedriveTick
{
	int64		task_id;
	int64		replayed;		/* ids handed to dlq_reprocess */
} DlqRedriveTick;

static MemoryContext redrive_cxt = NULL;	/* reset every worker_redrive */
static List *redrive_due = NIL; /* result of DLQ_PLAN_REDRIVE_DUE */

/* The next tick; DT_NOEND when no task is running or paused. */
static TimestampTz redrive_next = DT_NOEND;

/* Keep the rows of DLQ_PLAN_REDRIVE_DUE for worker_redrive. */
static void
worker_keep_redrive_due(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(redrive_cxt);

	redrive_due = NIL;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		DlqRedriveDue *t = palloc(sizeof(DlqRedriveDue));
		bool		isnull;
		Datum		d;

		t->task_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												 SPI_tuptable->tupdesc, 1, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		t->due_at = isnull ? DT_NOEND : DatumGetTimestampTz(d);
		redrive_due = lappend(redrive_due, t);
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * dlq_reprocess of a tick's ids as role, in a subtransaction: its summary,
 * copied into the caller's context, or NULL with *error set when the call
 * failed (and was rolled back).
 */
static Jsonb *
worker_redrive_replay(Oid role, Datum *values, const char *nulls, char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner resowner = CurrentResourceOwner;
	Jsonb	   *volatile summary = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		bool		isnull;
		Datum		d;

		worker_exec_as_role(DLQ_PLAN_REDRIVE, role, values, nulls);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContextSwitchTo(cxt);
		summary = DatumGetJsonbPCopy(d);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = resowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = resowner;
		*error = psprintf("replay failed with SQLSTATE %s: %s",
						  unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
		summary = NULL;
	}
	PG_END_TRY();
	return summary;
}

/* Tell the log that a task stopped (failed) or paused after an error. */
static void
worker_redrive_warn(int64 task, const char *queue, const char *what, const char *why)
{
	char		label[DLQ_LAST_ERROR_LEN];

	ereport(WARNING,
			(errmsg("redrive task " INT64_FORMAT " of queue \"%s\" %s: %s", task, queue, what, why),
			 errhint("dlq_redrive_status(" INT64_FORMAT ") shows the task.", task)));
	snprintf(label, sizeof(label), "redrive task " INT64_FORMAT " %s", task, what);
	worker_record_error(label, why);
}

/*
 * One tick of a task: take, replay as the task's creator, count.  All of
 * it in the transaction of worker_txn.
 */
static void
worker_redrive_body(void *arg)
{
	DlqRedriveTick *tick = (DlqRedriveTick *) arg;
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	Oid			role;
	Oid			target;
	Oid			handler;
	char	   *queue;
	Datum		ids;
	const char *why;
	char	   *error = NULL;
	Jsonb	   *summary;

	values[0] = Int64GetDatum(tick->task_id);
	values[1] = Int32GetDatum(dlq_batch_size);
	values[2] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	worker_exec(DLQ_PLAN_REDRIVE_TAKE, worker_state.owner, values, NULL);
	if (SPI_processed == 0)
		return;					/* nothing this tick, or the task ended */
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	queue = SPI_getvalue(row, desc, 1);
	role = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
	d = SPI_getbinval(row, desc, 3, &isnull);
	target = isnull ? InvalidOid : DatumGetObjectId(d);
	ids = SPI_getbinval(row, desc, 7, &isnull);
	d = SPI_getbinval(row, desc, 8, &isnull);
	handler = isnull ? InvalidOid : DatumGetObjectId(d);

	/* The same rule as automatic retries: the role is checked at every run. */
	why = worker_retry_refusal(role, target, handler);
	if (why != NULL)
	{
		values[1] = CStringGetTextDatum(why);
		worker_exec(DLQ_PLAN_REDRIVE_FAIL, worker_state.owner, values, NULL);
		worker_redrive_warn(tick->task_id, queue, "failed", why);
		return;
	}

	values[0] = ids;
	values[1] = SPI_getbinval(row, desc, 4, &isnull);
	values[2] = SPI_getbinval(row, desc, 5, &isnull);
	nulls[2] = isnull ? 'n' : ' ';
	values[3] = SPI_getbinval(row, desc, 6, &isnull);
	nulls[3] = isnull ? 'n' : ' ';
	summary = worker_redrive_replay(role, values, nulls, &error);

	values[0] = Int64GetDatum(tick->task_id);
	if (summary == NULL)
	{
		values[1] = CStringGetTextDatum(error);
		values[2] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
		worker_exec(DLQ_PLAN_REDRIVE_PAUSE, worker_state.owner, values, NULL);
		worker_redrive_warn(tick->task_id, queue, "paused", error);
		return;
	}
	values[1] = ids;
	values[2] = JsonbPGetDatum(summary);
	values[3] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	worker_exec(DLQ_PLAN_REDRIVE_DONE, worker_state.owner, values, NULL);
	tick->replayed = ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(ids)),
									ARR_DIMS(DatumGetArrayTypeP(ids)));
}

/*
 * Tick every task that is due, each in a transaction of its own, and work
 * out when the next tick is due (redrive_next).  Returns how many messages
 * the ticks handed to dlq_reprocess.
 */
static int64
worker_redrive(void)
{
	int64		total = 0;
	TimestampTz now;
	TimestampTz next = DT_NOEND;
	bool		failed = false;
	ListCell   *lc;

	redrive_next = DT_NOEND;
	if (!worker_state.has_reprocess || !worker_state.schema_current)
		return 0;
	if (redrive_cxt == NULL)
		redrive_cxt = AllocSetContextCreate(worker_cxt, "dlq worker redrive",
											ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(redrive_cxt);
	redrive_due = NIL;
	if (worker_run(DLQ_PLAN_REDRIVE_DUE, worker_state.owner, NULL, NULL, NULL) < 0)
		return 0;
	MemoryContextSwitchTo(redrive_cxt);

	now = GetCurrentTimestamp();
	foreach(lc, redrive_due)
	{
		DlqRedriveDue *t = (DlqRedriveDue *) lfirst(lc);
		DlqRedriveTick tick = {t->task_id, 0};

		if (t->due_at > now)
		{
			next = Min(next, t->due_at);
			continue;
		}
		next = Min(next, TimestampTzPlusMilliseconds(now, DLQ_REDRIVE_TICK_MS));
		if (worker_txn(dlq_plan_defs[DLQ_PLAN_REDRIVE].what, NULL,
					   worker_redrive_body, &tick))
			total += tick.replayed;
		else
			failed = true;
		MemoryContextSwitchTo(redrive_cxt);
		worker_interrupts();
	}

	/* A tick that failed (logged) is not tried again ten times a second. */
	if (failed)
		next = Max(next, TimestampTzPlusMilliseconds(now, DLQ_MAX_SLEEP_MS));
	redrive_next = next;
	MemoryContextSwitchTo(round_cxt);
	return total;
}

/* Claim this database's slot in shared memory for our heartbeat. */
static void
worker_attach(void)
{
	DlqWorkerSlot *slot;

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	slot = dlq_worker_slot_locked(MyDatabaseId, true);
	if (slot != NULL && slot->pid != MyProcPid && worker_slot_alive(slot))
	{
		/* Another worker already looks after this database. */
		LWLockRelease(dlq_shared->lock);
		proc_exit(0);
	}
	if (slot == NULL)
	{
		LWLockRelease(dlq_shared->lock);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no free dlq worker slot for database \"%s\"",
						worker_dbname),
				 errdetail("The dlq worker runs in at most %d databases at once.",
						   DLQ_MAX_DATABASES),
				 errhint("Use dlq.databases to choose the databases.")));
		proc_exit(0);
	}
	slot->pid = MyProcPid;
	slot->started_at = GetCurrentTimestamp();
	slot->rounds = 0;
	slot->errors = 0;
	slot->starts++;
	/* what a worker that died mid-step left there */
	slot->step[0] = '\0';
	slot->throttled = false;
	slot->throttle_sleep_us = 0;
	worker_slot = slot;
	LWLockRelease(dlq_shared->lock);
}

/*
 * VACUUM dlq.messages_live when many messages left it: every message is
 * inserted there and moved out when it closes, and autovacuum visits a
 * table once per autovacuum_naptime (a minute by default), while a busy
 * pipeline moves a table's worth of messages out in seconds; until a
 * vacuum the dead rows and index entries stay (tests/bench/README.md,
 * "Storage").  At most once a round, when the dead rows are at least
 * DLQ_VACUUM_LIVE_MIN_DEAD and a fifth of the live ones.  A VACUUM runs its
 * own transactions, so it is not a worker_txn step.
 */
static void
worker_vacuum_live(void)
{
	const char *what = "vacuuming dlq.messages_live";

	if (worker_run(DLQ_PLAN_LIVE_DEAD, InvalidOid, NULL, NULL, NULL) <= 0)
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		VacuumStmt *stmt = makeNode(VacuumStmt);

		pgstat_report_activity(STATE_RUNNING, what);
		stmt->options = NIL;
		stmt->rels = list_make1(makeVacuumRelation(makeRangeVar("dlq", "messages_live", -1),
												   InvalidOid, NIL));
		stmt->is_vacuumcmd = true;
		ExecVacuum(make_parsestate(NULL), stmt, true);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		worker_txn_failed(what, NULL);
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(round_cxt);
}

/*
 * Raise the alerts due and write each to the server log: one LOG line
 * whose message is the alert's sentence (the NOTIFY on dlq_alerts carries
 * the same with its id and time).  Returns how many were raised, -1 when
 * the step failed.
 */
static int64
worker_alert(void)
{
	Datum		values[1];
	int64		ok;
	ListCell   *lc;

	alert_rows = NIL;
	values[0] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	ok = worker_run(DLQ_PLAN_ALERT, worker_state.owner, values, NULL, NULL);
	if (ok < 0)
		return -1;
	foreach(lc, alert_rows)
	{
		DlqAlert   *a = (DlqAlert *) lfirst(lc);

		ereport(LOG,
				(errmsg("%s", a->message ? a->message : "dlq alert"),
				 errdetail("Severity %s, alert_id %lld (its event in dlq.events), database \"%s\".",
						   a->severity ? a->severity : "warning", (long long) a->alert_id,
						   worker_dbname)));
	}
	return list_length(alert_rows);
}

static void
worker_round(void)
{
	Datum		values[5];
	int64		recovered,
				expired,
				retried,
				purged,
				events_purged = 0,
				alerts;
	TimestampTz start = GetCurrentTimestamp();

	MemoryContextReset(round_cxt);
	MemoryContextSwitchTo(round_cxt);
	retry_groups = NIL;
	step_queues = NIL;

	if (worker_run(DLQ_PLAN_CHECK, InvalidOid, NULL, NULL, NULL) < 0)
		return;
	if (worker_slot == NULL)
		worker_attach();

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_slot->last_round_start = start;
	if (!worker_state.schema_current)
	{
		/* Nothing to do until ALTER EXTENSION dlq UPDATE; still alive. */
		worker_slot->rounds++;
		worker_slot->last_heartbeat = GetCurrentTimestamp();
		LWLockRelease(dlq_shared->lock);
		worker_record_error("checking the extension",
							"waiting for ALTER EXTENSION dlq UPDATE");
		return;
	}
	LWLockRelease(dlq_shared->lock);

	/*
	 * Unclaimed replays are looked for four times per dlq.replay_timeout (at
	 * most once per round): that costs a probe per unclaimed message.
	 */
	values[1] = Float8GetDatum((double) dlq_replay_timeout);
	values[2] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	values[3] = BoolGetDatum(start >= TimestampTzPlusMilliseconds(last_unclaimed_check,
																  dlq_replay_timeout * 250L));
	if (DatumGetBool(values[3]))
		last_unclaimed_check = start;
	recovered = worker_repeat(DLQ_PLAN_RECOVER, values);

	values[1] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	expired = worker_repeat(DLQ_PLAN_EXPIRE, values);
	/*
	 * Queues above max_messages: their oldest pending and review messages
	 * expire too (dlq.worker_cap), counted with the expired ones.
	 */
	expired += worker_repeat(DLQ_PLAN_CAP, values);

	retried = worker_retry();
	retried += worker_redrive();

	/*
	 * Closed messages leave by TRUNCATE of a slot (archived on the way when
	 * their queue keeps an archive), archived ones likewise; 1.0's by DELETE.
	 */
	values[0] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	values[1] = Float8GetDatum((double) dlq_partition_interval);
	values[2] = Float8GetDatum((double) dlq_archive_interval);
	purged = Max(worker_run(DLQ_PLAN_ROTATE, worker_state.owner, values, NULL, NULL), 0);
	values[1] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
	purged += worker_repeat(DLQ_PLAN_PURGE, values);

	if (dlq_events_retention > 0)
	{
		values[1] = Float8GetDatum((double) dlq_events_retention);
		values[2] = CStringGetTextDatum(DLQ_WORKER_ACTOR);
		events_purged = worker_repeat(DLQ_PLAN_PURGE_EVENTS, values);
	}

	alerts = worker_alert();
	worker_vacuum_live();

	LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
	worker_slot->last_recovered = recovered;
	worker_slot->last_expired = expired;
	worker_slot->last_retried = retried;
	worker_slot->last_purged = purged;
	worker_slot->last_events_purged = events_purged;
	worker_slot->last_alerts = Max(alerts, 0);
	worker_slot->rounds++;
	worker_slot->last_heartbeat = GetCurrentTimestamp();
	LWLockRelease(dlq_shared->lock);
}

/*
 * Between rounds: sleep, waking at least every DLQ_MAX_SLEEP_MS to see
 * whether a DROP DATABASE waits for us.
 */
static void
worker_sleep(TimestampTz round_start)
{
	for (;;)
	{
		TimestampTz next = TimestampTzPlusMilliseconds(round_start, dlq_naptime);
		TimestampTz now = GetCurrentTimestamp();
		long		left;

		if (now >= next)
			return;
		/* Redrive tasks tick between rounds too (worker_redrive). */
		if (now >= redrive_next)
		{
			(void) worker_redrive();
			if (worker_slot != NULL)
			{
				/* between rounds, no step is under way, and the worker is alive */
				LWLockAcquire(dlq_shared->lock, LW_EXCLUSIVE);
				worker_progress_clear();
				worker_slot->last_heartbeat = GetCurrentTimestamp();
				LWLockRelease(dlq_shared->lock);
			}
			worker_leave_if_claimed();
			continue;
		}
		left = TimestampDifferenceMilliseconds(now, Min(next, redrive_next));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(left, DLQ_MAX_SLEEP_MS),
						 worker_get_wait_event("DlqWorkerMain"));
		ResetLatch(MyLatch);
		worker_interrupts();

		if (left > DLQ_MAX_SLEEP_MS)
		{
			bool		claimed;

			StartTransactionCommand();
			claimed = worker_database_claimed();
			CommitTransactionCommand();
			if (claimed)
				worker_leave("the database is being dropped or changed");
		}
	}
}

void
dlq_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * Connect as the bootstrap superuser; every statement then runs as the
	 * extension owner, or as a queue's retry_role for its retries.
	 */
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	before_shmem_exit(worker_detach, (Datum) 0);

	StartTransactionCommand();
	worker_dbname = MemoryContextStrdup(TopMemoryContext,
										get_database_name(MyDatabaseId));
	CommitTransactionCommand();

	SetConfigOption("application_name", "dlq worker", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_SESSION);
	/* A batch waits for no table lock for long; the next round tries again. */
	SetConfigOption("lock_timeout", "5s", PGC_SUSET, PGC_S_SESSION);

	worker_cxt = AllocSetContextCreate(TopMemoryContext, "dlq worker",
									   ALLOCSET_DEFAULT_SIZES);
	round_cxt = AllocSetContextCreate(worker_cxt, "dlq worker round",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		TimestampTz start = GetCurrentTimestamp();

		worker_interrupts();
		worker_round();
		worker_progress_end();
		worker_sleep(start);
	}
}

/* ----------------------------------------------------------------
 * SQL: dlq.worker_status()
 * ----------------------------------------------------------------
 */

PG_FUNCTION_INFO_V1(dlq_worker_status);

/* An interval of usecs microseconds. */
static Datum
worker_interval(int64 usecs)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = usecs;
	return IntervalPGetDatum(iv);
}

/*
 * The shared-memory slot of this database's worker as one row, or no row
 * when there is none (library not preloaded, worker not started yet).
 *
 * Version 1.1 added the progress columns at the end (see the section
 * "Worker throttle and progress" of dlq--1.0--1.1.sql); a 1.0 schema's
 * function has only the first DLQ_STATUS_COLS_1_0, and gets only those.
 */
#define DLQ_STATUS_COLS_1_0 15
#define DLQ_STATUS_COLS 22

Datum
dlq_worker_status(PG_FUNCTION_ARGS)
{
	DlqWorkerSlot slot;
	TupleDesc	tupdesc;
	Datum		values[DLQ_STATUS_COLS];
	bool		nulls[DLQ_STATUS_COLS];
	bool		running;
	int			i = 0;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != DLQ_STATUS_COLS && tupdesc->natts != DLQ_STATUS_COLS_1_0)
		elog(ERROR, "dlq.worker_status() must return %d columns", DLQ_STATUS_COLS);
	if (!dlq_worker_slot_copy(MyDatabaseId, &slot))
		PG_RETURN_NULL();

	memset(nulls, 0, sizeof(nulls));
	running = slot.pid != 0;
	values[i] = Int32GetDatum(slot.pid);
	nulls[i++] = !running;
	values[i++] = BoolGetDatum(running);
#define DLQ_TS(t) do { values[i] = TimestampTzGetDatum(t); nulls[i++] = (t) == 0; } while (0)
	DLQ_TS(slot.started_at);
	DLQ_TS(slot.last_round_start);
	DLQ_TS(slot.last_heartbeat);
	values[i++] = Int64GetDatum(slot.rounds);
	values[i++] = Int64GetDatum(slot.last_expired);
	values[i++] = Int64GetDatum(slot.last_purged);
	values[i++] = Int64GetDatum(slot.last_events_purged);
	values[i++] = Int64GetDatum(slot.last_recovered);
	values[i++] = Int64GetDatum(slot.last_retried);
	values[i++] = Int64GetDatum(slot.last_alerts);
	values[i++] = Int64GetDatum(slot.errors);
	DLQ_TS(slot.last_error_at);
	values[i] = CStringGetTextDatum(slot.last_error);
	nulls[i++] = slot.last_error[0] == '\0';
	Assert(i == DLQ_STATUS_COLS_1_0);

	/* 1.1: the step under way (all NULL between rounds) and the throttle */
	values[i] = CStringGetTextDatum(slot.step);
	nulls[i++] = !running || slot.step[0] == '\0';
	values[i] = CStringGetTextDatum(slot.step_queue);
	nulls[i++] = !running || slot.step[0] == '\0' || slot.step_queue[0] == '\0';
	DLQ_TS(running && slot.step[0] != '\0' ? slot.step_started_at : 0);
	values[i] = Int64GetDatum(slot.step_done);
	nulls[i++] = !running || slot.step[0] == '\0';
	values[i++] = BoolGetDatum(running && slot.throttled);
	values[i++] = worker_interval(running ? slot.throttle_sleep_us : 0);
	values[i++] = worker_interval(slot.last_throttle_sleep_us);
#undef DLQ_TS
	Assert(i == DLQ_STATUS_COLS);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
