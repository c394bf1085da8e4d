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

#include "utils/guc.h"

#include "dlq.h"

int			dlq_max_payload_bytes = 1024 * 1024;
int			dlq_max_ids_per_call = 10000;

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
