/*-------------------------------------------------------------------------
 *
 * history.c
 *	  Failed replay attempts kept in the audit trail, so that dlq_history
 *	  can show every attempt of a message with its SQLSTATE and error (see
 *	  history.h for the format).  Replay (replay.c) gathers the failures of
 *	  a call per queue in a DlqAttemptLog; a consumer's nack (consumer.c)
 *	  writes its one attempt with dlq_attempt_json; the worker's recovery of
 *	  timed-out replays is SQL (dlq.worker_recover) and writes the same
 *	  shape.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "history.h"

/*
 * A log of failed attempts for one queue and event kind, allocated in the
 * current memory context, which must outlive the log.  extra: JSON members
 * (without braces) that start every event's detail, or NULL.
 */
DlqAttemptLog *
dlq_attempt_log_create(const char *kind, const char *actor, const char *queue,
					   Datum request_id, const char *extra)
{
	DlqAttemptLog *log = palloc0(sizeof(DlqAttemptLog));

	log->kind = kind;
	log->actor = pstrdup(actor);
	log->queue = pstrdup(queue);
	log->request_id = request_id;
	log->extra = extra ? pstrdup(extra) : NULL;
	log->cxt = CurrentMemoryContext;
	initStringInfo(&log->attempts);
	return log;
}

/*
 * One attempt as a JSON object: the message, its attempt number, the
 * SQLSTATE (or null) and the error clipped to DLQ_ATTEMPT_ERROR_BYTES on a
 * character boundary.
 */
char *
dlq_attempt_json(int64 id, int attempt, const char *sqlstate, const char *error)
{
	const char *text = error ? error : "";
	int			len = strlen(text);
	int			keep = len > DLQ_ATTEMPT_ERROR_BYTES ?
		pg_mbcliplen(text, len, DLQ_ATTEMPT_ERROR_BYTES) : len;

	return psprintf("{\"message_id\": " INT64_FORMAT ", \"attempt\": %d, \"sqlstate\": %s, \"error\": %s}",
					id, attempt,
					sqlstate && sqlstate[0] ? dlq_json_quote(sqlstate) : "null",
					dlq_json_quote(pnstrdup(text, keep)));
}

/*
 * Add a failed attempt.  The log writes an event each time it holds
 * DLQ_AUDIT_MAX_IDS of them.  Inside SPI, as the owner.
 */
void
dlq_attempt_log_add(DlqAttemptLog *log, int64 id, int attempt, const char *sqlstate,
					const char *error)
{
	MemoryContext old = MemoryContextSwitchTo(log->cxt);

	if (log->nids > 0)
		appendStringInfoString(&log->attempts, ", ");
	appendStringInfoString(&log->attempts, dlq_attempt_json(id, attempt, sqlstate, error));
	log->ids[log->nids++] = id;
	MemoryContextSwitchTo(old);
	if (log->nids >= DLQ_AUDIT_MAX_IDS)
		dlq_attempt_log_flush(log);
}

static int
history_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* Write the attempts gathered so far as one event, if there are any. */
void
dlq_attempt_log_flush(DlqAttemptLog *log)
{
	char	   *detail;

	if (log->nids == 0)
		return;
	qsort(log->ids, log->nids, sizeof(int64), history_cmp_int64);
	detail = psprintf("{%s%s\"attempts\": [%s]}",
					  log->extra ? log->extra : "", log->extra ? ", " : "",
					  log->attempts.data);
	dlq_audit(log->kind, log->actor, log->queue, log->request_id, true,
			  log->nids, log->ids, log->nids, dlq_jsonb(detail));
	pfree(detail);
	log->nids = 0;
	resetStringInfo(&log->attempts);
}
