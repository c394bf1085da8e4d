/*-------------------------------------------------------------------------
 *
 * history.h
 *	  Failed replay attempts in the audit trail (history.c).
 *
 *	  Every event that ends replay attempts with a failure (replay_failed,
 *	  nacked, timed_out) carries in its detail an array "attempts" of
 *	  {"message_id", "attempt", "sqlstate", "error"}, one element per
 *	  message, the error clipped to DLQ_ATTEMPT_ERROR_BYTES.  Such an event
 *	  names at most DLQ_AUDIT_MAX_IDS messages, so that it always lists their
 *	  ids and the events_message_ids index finds it: a call that fails more
 *	  messages writes one event per DLQ_AUDIT_MAX_IDS of them.  dlq_history
 *	  (dlq--1.0--1.1.sql) picks a message's element out of each.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_HISTORY_H
#define DLQ_HISTORY_H

#include "lib/stringinfo.h"

#include "dlq.h"

/* The longest error text kept per attempt in an event, in bytes. */
#define DLQ_ATTEMPT_ERROR_BYTES 1000

/* Failed attempts of one queue, written as events of one kind. */
typedef struct DlqAttemptLog
{
	const char *kind;			/* event kind */
	const char *actor;
	const char *queue;
	Datum		request_id;
	const char *extra;			/* JSON members each event's detail starts with, or NULL */
	MemoryContext cxt;			/* where the log keeps what it gathers */
	int			nids;			/* attempts not written yet */
	int64		ids[DLQ_AUDIT_MAX_IDS];
	StringInfoData attempts;	/* their JSON objects, comma separated */
} DlqAttemptLog;

extern DlqAttemptLog *dlq_attempt_log_create(const char *kind, const char *actor,
											 const char *queue, Datum request_id,
											 const char *extra);
extern void dlq_attempt_log_add(DlqAttemptLog *log, int64 id, int attempt,
								const char *sqlstate, const char *error);
extern void dlq_attempt_log_flush(DlqAttemptLog *log);
extern char *dlq_attempt_json(int64 id, int attempt, const char *sqlstate,
							  const char *error);

#endif							/* DLQ_HISTORY_H */
