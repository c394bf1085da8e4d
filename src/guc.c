/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The dlq.* configuration parameters.  Every one is SHOW-able and
 *	  documented in README.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "dlq.h"

int			dlq_max_payload_bytes = 1024 * 1024;
int			dlq_max_ids_per_call = 10000;
bool		dlq_drop_discards_messages = false;

/* etl_status (status.c) */
int			dlq_status_threshold = 100;
int			dlq_stale_after = 3600;
int			dlq_syncing_window = 10000;
char	   *dlq_status_now = NULL;
int			dlq_status_worker = DLQ_STATUS_WORKER_AUTO;

static const struct config_enum_entry dlq_status_worker_options[] = {
	{"auto", DLQ_STATUS_WORKER_AUTO, false},
	{"running", DLQ_STATUS_WORKER_RUNNING, false},
	{"stopped", DLQ_STATUS_WORKER_STOPPED, false},
	{"not_preloaded", DLQ_STATUS_WORKER_NOT_PRELOADED, false},
	{"standby", DLQ_STATUS_WORKER_STANDBY, false},
	{NULL, 0, false}
};

void
dlq_define_gucs(void)
{
	DefineCustomIntVariable("dlq.max_payload_bytes",
							"Largest payload, and largest error text, dlq_store accepts.",
							"Larger ones are refused with SQLSTATE 54000.",
							&dlq_max_payload_bytes,
							1024 * 1024, 1024, 256 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.max_ids_per_call",
							"Most message ids one call of dlq_reprocess, dlq_discard, dlq_resolve or dlq_ack accepts.",
							"Use the _all forms for more.",
							&dlq_max_ids_per_call,
							10000, 1, 1000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	/*
	 * DROP EXTENSION dlq (drop_guard.c).  PGC_USERSET: it only removes a
	 * safety catch from commands that already require owning the extension
	 * (or its schema, or being its owner for DROP OWNED), so it grants
	 * nothing; a non-superuser owner of the extension must be able to set
	 * it.  Defined here, in every backend that loads the library, so that a
	 * value SET before the library is loaded (a placeholder) is taken over
	 * when the event trigger loads it.
	 */
	DefineCustomBoolVariable("dlq.drop_discards_messages",
							 "Lets DROP EXTENSION dlq delete the messages and audit trail it holds.",
							 "Off: DROP EXTENSION dlq, and a DROP SCHEMA ... CASCADE or DROP OWNED that would drop it, fail while dlq.messages holds messages.",
							 &dlq_drop_discards_messages,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	/* etl_status (status.c) */
	DefineCustomIntVariable("dlq.status_threshold",
							"Lag above which etl_status reports a queue or stage as stale, or error when the worker is not running.",
							"Lag is pending + replaying messages for a queue, source max key - watermark for a stage.",
							&dlq_status_threshold,
							100, 0, INT_MAX,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.stale_after",
							"Age of the oldest pending message above which etl_status reports its queue as stale.",
							"Unless there was replay activity within dlq.syncing_window.",
							&dlq_stale_after,
							3600, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.syncing_window",
							"How recent replay activity (or a watermark advance) must be for etl_status to report syncing.",
							NULL,
							&dlq_syncing_window,
							10000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("dlq.status_now",
							   "For tests only: the time etl_status takes as now; empty means the clock.",
							   NULL,
							   &dlq_status_now,
							   "",
							   PGC_USERSET, 0,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("dlq.status_worker",
							 "For tests only: the worker state etl_status assumes; auto reads it from shared memory.",
							 NULL,
							 &dlq_status_worker,
							 DLQ_STATUS_WORKER_AUTO, dlq_status_worker_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
}

/*
 * Background worker (worker.c).  All PGC_SIGHUP: they belong in
 * postgresql.conf or ALTER SYSTEM, and a reload reaches the launcher and
 * every worker.
 */
int			dlq_naptime = 1000;
int			dlq_batch_size = 10000;
int			dlq_replay_timeout = 300;
int			dlq_events_retention = 90 * 24 * 3600;
int			dlq_partition_interval = 24 * 3600;
int			dlq_archive_interval = 16 * 24 * 3600;
char	   *dlq_databases = NULL;
char	   *dlq_worker_role = NULL;
int			dlq_worker_cost_limit = DLQ_WORKER_COST_LIMIT_DEFAULT;
int			dlq_worker_cost_delay = DLQ_WORKER_COST_DELAY_DEFAULT;

/* dlq.databases must be a list of identifiers, as in other list settings. */
static bool
guc_check_databases(char **newval, void **extra, GucSource source)
{
	char	   *rawstring = pstrdup(*newval);
	List	   *names = NIL;
	bool		ok = SplitIdentifierString(rawstring, ',', &names);

	list_free(names);
	pfree(rawstring);
	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	return ok;
}

void
dlq_define_worker_gucs(void)
{
	DefineCustomIntVariable("dlq.naptime",
							"Time between two rounds of the dlq background worker.",
							"Each round expires, purges, recovers timed-out replays, retries and alerts.",
							&dlq_naptime,
							1000, 10, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.batch_size",
							"Most messages the dlq background worker changes in one transaction.",
							NULL,
							&dlq_batch_size,
							10000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.replay_timeout",
							"Time after which a replaying message nobody finishes goes back to pending.",
							"Counted from the expiry of its claim, or from the start of its replay when it was never claimed.",
							&dlq_replay_timeout,
							300, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.events_retention",
							"Age after which the dlq background worker deletes audit events.",
							"0 keeps them forever.",
							&dlq_events_retention,
							90 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.partition_interval",
							"Time closed messages go to one slot of the ring of partitions before the next.",
							"A closed slot is emptied with TRUNCATE once its messages are past their queue's resolved_retention.",
							&dlq_partition_interval,
							24 * 3600, 1, 365 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.archive_interval",
							"Time archived messages go to one slot of the archive ring of partitions before the next.",
							"An archive slot is emptied with TRUNCATE once its messages are past their queue's archive_retention; the ring of eight should span more than archive_retention plus this.",
							&dlq_archive_interval,
							16 * 24 * 3600, 1, 365 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("dlq.databases",
							   "Databases in which the dlq background worker runs.",
							   "A comma-separated list of database names; empty means every database that has the extension.",
							   &dlq_databases,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   guc_check_databases, NULL, NULL);

	DefineCustomStringVariable("dlq.worker_role",
							   "Role as which the dlq background worker requests automatic retries.",
							   "Empty means the owner of the extension.  Maintenance always runs as the owner.",
							   &dlq_worker_role,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	/*
	 * The worker's throttle, after autovacuum's vacuum_cost_limit and
	 * vacuum_cost_delay: a message expired, purged, recovered or retried,
	 * or an audit event purged, costs 1.
	 */
	DefineCustomIntVariable("dlq.worker_cost_limit",
							"Messages the dlq background worker handles before it sleeps for dlq.worker_cost_delay.",
							"It also handles at most this many in one transaction.  0 turns the throttle off.",
							&dlq_worker_cost_limit,
							DLQ_WORKER_COST_LIMIT_DEFAULT, 0, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.worker_cost_delay",
							"Time the dlq background worker sleeps when it has used up dlq.worker_cost_limit.",
							"0 turns the throttle off.",
							&dlq_worker_cost_delay,
							DLQ_WORKER_COST_DELAY_DEFAULT, 0, 10000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}
