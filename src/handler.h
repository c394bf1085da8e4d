/*-------------------------------------------------------------------------
 *
 * handler.h
 *	  Replay handlers and per-message failure isolation (handler.c), used
 *	  by replay.c for the messages it re-applies to a table or hands to a
 *	  queue's replay_handler.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_HANDLER_H
#define DLQ_HANDLER_H

#include "fmgr.h"
#include "utils/jsonb.h"
#include "utils/elog.h"

/*
 * Failure isolation.  The messages of a batch run a few at a time inside
 * one subtransaction each (a "run").  When message i of a run raises, the
 * run is rolled back, i is recorded as failed, and the run starts again
 * without i, cut to end at most run_size messages after i (run_size is
 * halved first): the messages before i are re-run, those after it run for
 * the first time.  A run without a failure doubles run_size for the next
 * one, up to DLQ_ISOLATE_MAX_RUN messages and about
 * DLQ_ISOLATE_RUN_BUDGET_US microseconds of work as timed in that run.  Query cancel, statement timeout and shutdown (class 57) are never
 * a message's failure: they abort the call.
 */
#define DLQ_ISOLATE_START_RUN	32
#define DLQ_ISOLATE_MAX_RUN		1024
#define DLQ_ISOLATE_RUN_BUDGET_US	10000.0

typedef struct DlqIsolate
{
	int			run_size;		/* messages per subtransaction now */
	int64		subxacts;		/* subtransactions started */
	int64		rollbacks;		/* of them, rolled back */
	int64		executions;		/* messages run, re-runs included */
} DlqIsolate;

/*
 * Run messages from..to-1 of a batch, skipping the failed ones, inside the
 * run's subtransaction; set *current to each one's index before running it
 * and to -1 after the last.  A message fails by raising an error.
 */
typedef void (*DlqIsolateRunFn) (void *arg, int from, int to, const bool *failed,
								 volatile int *current, int64 *executions);

/*
 * Record that message index failed with edata (copied in the batch's
 * context); false to let the error abort the whole call instead.
 */
typedef bool (*DlqIsolateFailFn) (void *arg, int index, ErrorData *edata);

extern void dlq_isolate_init(DlqIsolate *iso);
extern void dlq_isolate_run(DlqIsolate *iso, int n, DlqIsolateRunFn run,
							DlqIsolateFailFn fail, void *arg);
/* Is a run executing, that is, user code on behalf of a replay? */
extern bool dlq_isolate_active(void);

/*
 * A queue's replay handler: a function f(jsonb) or f(dlq.message), called
 * once per message as the caller of the replay.
 */
typedef struct DlqHandler
{
	Oid			fn;
	bool		whole_message;	/* takes dlq.message, else jsonb */
	char	   *name;			/* regprocedure text */
	Oid			owner;			/* it runs as its owner */
	char	   *search_path;	/* the owner's (dlq_role_search_path) */
	FmgrInfo	flinfo;
} DlqHandler;

extern void dlq_handler_open(DlqHandler *h, Oid fn, Oid bound_owner, Oid caller,
							 const char *queue, MemoryContext cxt);
extern void dlq_handler_call(DlqHandler *h, Datum arg);
extern const char *dlq_handler_refusal(Oid fn, Oid role);
extern Jsonb *dlq_handler_error_detail(const DlqHandler *h, const ErrorData *edata);

#endif							/* DLQ_HANDLER_H */
