/*-------------------------------------------------------------------------
 *
 * dlq.h
 *	  Declarations shared by the modules of the dlq extension, and the map
 *	  of those modules.
 *
 * Module map: every C file, what it owns, and the SQL functions whose C
 * entry points it holds (C symbol in brackets where it differs from the SQL
 * name).  Arrows between files run one way: features call the entities
 * (queue.c, store.c) and the helpers (util.c), never each other back.
 *
 *	  dlq.c			module load (_PG_init): GUCs defined, the counts
 *					callbacks registered, shared memory and the launcher
 *					hooked when preloaded
 *	  guc.c			every dlq.* setting
 *	  util.c		helpers: argument validation, running as the extension
 *					owner and back as the caller, kept plans and checked SPI
 *					calls, id arrays, JSON strings, request ids, default
 *					channels, the audit trail (dlq.events) and tallies for
 *					it, the table an isolate-mode intake view reads
 *	  version.c		the library against an older schema (version.h)
 *	  shmem.c		shared memory: the worker slots (shmem.h)
 *	  drop_guard.c	dlq.drop_guard() [dlq_drop_guard], the event trigger that
 *					keeps DROP EXTENSION from deleting messages
 *	  store.c		dlq_store; storing a message (dlq_store_message) and
 *					creating a queue (dlq_ensure_queue) for every module
 *	  queue.c		dlq_configure, dlq_pause, dlq_resume; whether a queue
 *					exists (dlq_check_queue_exists)
 *	  list.c		dlq_list, dlq_list_page, dlq_get
 *	  filter.c		the arguments the bulk calls share: filters (component,
 *					sqlstate, error_class, since, until), dry_run, reason,
 *					ticket (filter.h)
 *	  replay.c		dlq_reprocess, dlq_reprocess_all
 *	  handler.c		replay handlers, and each message's failure caught in
 *					batched subtransactions for table and handler replays
 *					(handler.h)
 *	  edit.c		dlq_edit: fixing the payload of an open message
 *	  history.c		failed replay attempts kept in the audit trail
 *					(history.h), for dlq_history
 *	  lifecycle.c	dlq_discard, dlq_discard_all, dlq_resolve,
 *					dlq_resolve_all
 *	  move.c		dlq_move, dlq_move_all: open messages to another queue
 *	  redrive.c		dlq_redrive_start, dlq_redrive_status,
 *					dlq_redrive_cancel: redrive tasks, run by the worker
 *	  consumer.c	dlq_listen, dlq_claim, dlq_ack, dlq_nack; the
 *					live-consumer registry (dlq_consumer_alive)
 *	  attach.c		dlq_attach (and its reject limits), dlq_detach
 *	  capture.c		dlq_capture, dlq_capture_isolate (trigger functions):
 *					diverting failed rows, buffered and stored in batches;
 *					reject limits per statement, COPY line numbers
 *	  capture_predict.c	constraint and foreign key prediction for capture
 *	  reapply.c		re-applying a captured row to its table on replay
 *					(dlq_reapply_row, capture.h); capture_int.h is the
 *					private header of these three files
 *	  counts.c		dlq.count_messages() [dlq_count_messages], the trigger
 *					and transaction callbacks that keep dlq.counts
 *	  status.c		etl_status [dlq_etl_status], etl_status_json
 *					[dlq_etl_status_json], dlq.etl_worker_state()
 *					[dlq_etl_worker_state]
 *	  stages.c		etl_register_stage [dlq_etl_register_stage],
 *					etl_watermark [dlq_etl_watermark]; a stage source's key
 *					range for etl_status (dlq_stage_source_range)
 *	  worker.c		the launcher and per-database background workers;
 *					dlq.worker_status() [dlq_worker_status]; the ticks of
 *					redrive tasks and the early stop of automatic retries
 *
 * SQL functions written in SQL or PL/pgSQL (dlq_history, dlq.recount,
 * dlq.retry_delay, the worker steps dlq.worker_*, the dlq.metrics view) are
 * in dlq--1.0.sql and dlq--1.0--1.1.sql.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_H
#define DLQ_H

#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* Longest queue, component and channel name, in bytes (NAMEDATALEN - 1). */
#define DLQ_MAX_NAME_BYTES	63

/* Longest dedup_key, in bytes: it lives in a btree index entry. */
#define DLQ_MAX_DEDUP_KEY_BYTES 512

/*
 * Limits of arguments (DESIGN 7.1), checked by the validators of util.c:
 * the largest metadata, error_detail or note (payload and error text have
 * dlq.max_payload_bytes), and the longest interval for ages and retention
 * (retention, resolved_retention, older_than) and for delays and leases
 * (retry_base, retry_max, retry_in, visibility, alert_cooldown).
 */
#define DLQ_MAX_TEXT_ARG_BYTES	54000
#define DLQ_MAX_AGE_YEARS		100
#define DLQ_MAX_DELAY_YEARS		1

/*
 * Storage (dlq--1.0--1.1.sql, "Storage"): dlq.messages is partitioned by
 * slot; open messages are in slot 0 (dlq.messages_live), and a statement
 * that closes a message (resolved, expired) sets slot to the ring's current
 * slot, DLQ_CLOSING_SLOT, which moves it into that partition.  Statements on
 * open messages say "slot = 0" so that they touch only that partition.  The
 * unique violation of a dedup_key names the live partition's index.  What
 * needs the 1.1 schema is marked [[...]] for dlq_schema_sql (version.h).
 */
#define DLQ_CLOSING_SLOT \
	"(SELECT cs.slot FROM dlq.slots cs WHERE cs.state = 'current')"
#define DLQ_SET_CLOSING_SLOT "[[, slot = " DLQ_CLOSING_SLOT "]]"
#define DLQ_DEDUP_INDEX		"messages_live_dedup"

/*
 * dlq.counts shards (counts.c): a writer's backend id modulo
 * DLQ_COUNT_SHARDS, and for messages in a closed slot the negative shards
 * of that slot, -(slot * 64 + 1) down to -(slot * 64 + 64), which
 * dlq.slot_empty reads and removes (dlq--1.0--1.1.sql).
 */
#define DLQ_COUNT_SHARDS	64

/* Dead rows in dlq.messages_live from which the worker vacuums it (worker.c). */
#define DLQ_VACUUM_LIVE_MIN_DEAD 10000
#define DLQ_SLOT_SHARD(slot, shard) (-((slot) * DLQ_COUNT_SHARDS + (shard)) - 1)
#define DLQ_DEDUP_INDEX_1_0	"messages_dedup"

/*
 * The columns of dlq.message, the API's row type, from dlq.messages m; a
 * statement with them goes through dlq_schema_sql (resolution is 1.1's).
 */
#define DLQ_MESSAGE_COLUMNS \
	"m.message_id, m.queue, m.component, m.status, m.payload, m.error," \
	" m.sqlstate, m.error_class, m.error_detail, m.metadata, m.dedup_key," \
	" m.occurrences, m.attempts, m.max_attempts, m.stored_at," \
	" m.last_failed_at, m.expires_at, m.next_retry_at, m.replay_request_id," \
	" m.claimed_by, m.claim_expires_at, m.resolved_at, m.source_relation," \
	" m.operation[[, m.resolution]]"

/*
 * SQLSTATE of a replay refused because a queue that hands its messages to
 * consumers has no live consumer (class DL, dlq's own): a caller tells it
 * from a paused queue (55000) and may wait for a consumer and retry, like
 * an HTTP 503, where a paused queue is a 409.
 */
#define ERRCODE_DLQ_NO_CONSUMER MAKE_SQLSTATE('D','L','Q','0','1')

/*
 * SQLSTATE of a statement that diverted more failed rows than the reject
 * limits of its table allow (dlq_attach's max_errors, max_error_ratio;
 * capture.c): like a COPY past its REJECT_LIMIT, but dlq's own, so that a
 * loader tells "the input is garbage" from every other data error.
 */
#define ERRCODE_DLQ_REJECT_LIMIT MAKE_SQLSTATE('D','L','Q','0','2')

/* The channel on which the worker NOTIFYs alerts; no queue may use it. */
#define DLQ_ALERT_CHANNEL	"dlq_alerts"

/* GUC variables (guc.c) */
extern int	dlq_max_payload_bytes;
extern int	dlq_max_ids_per_call;
extern bool dlq_drop_discards_messages;

extern void dlq_define_gucs(void);

/*
 * Running as the extension owner (util.c).
 *
 * The API functions are SECURITY INVOKER so that EXECUTE grants decide who
 * may call them; the internal tables are then read and written as the
 * extension owner with a pinned search_path, the way a SECURITY DEFINER
 * function would, and the caller's identity is kept for the audit trail and
 * for anything that touches user tables.
 */
typedef struct DlqOwnerContext
{
	Oid			caller;			/* user before the switch */
	int			caller_sec_context;
	const char *caller_search_path; /* kept alive by the GUC stack */
	int			guc_nest_level;
} DlqOwnerContext;

extern void dlq_become_owner(DlqOwnerContext *ctx);
extern void dlq_restore_caller(DlqOwnerContext *ctx);

/*
 * Inside dlq_become_owner: act as the caller again, with the caller's
 * search_path, for work on user tables (their triggers see what they would
 * see in the caller's own statements); then back to the owner.
 */
typedef struct DlqCallerScope
{
	Oid			userid;
	int			sec_context;
	int			guc_nest_level;
} DlqCallerScope;

extern void dlq_as_caller_begin(const DlqOwnerContext *ctx, DlqCallerScope *scope);
extern void dlq_as_caller_end(DlqCallerScope *scope);
extern Oid	dlq_rel_owner(Oid relid);
extern void dlq_as_relowner_begin(Oid relowner, DlqCallerScope *scope);
extern void dlq_as_relowner_end(DlqCallerScope *scope);
extern Oid	dlq_messages_relid(void);

/* Argument validation (util.c); each raises a clear error or returns. */
extern char *dlq_check_name(const char *what, text *value, bool allow_null);
extern char *dlq_check_label(const char *what, text *value, bool allow_null, int max_bytes);
extern char *dlq_check_channel(text *value);
extern void dlq_check_size(const char *what, const struct varlena *value);
extern void dlq_check_payload_size(const char *what, Size bytes);
extern Interval *dlq_check_interval(FunctionCallInfo fcinfo, int argno, const char *what,
									bool allow_zero, int max_years);
extern void dlq_check_not_null(FunctionCallInfo fcinfo, int argno, const char *what);
extern const char *dlq_check_sqlstate(text *value);
extern const char *dlq_error_class(const char *sqlstate);
extern void dlq_check_json_object(const char *what, Jsonb *value);
extern const char *dlq_check_status(text *value, bool allow_any);
extern int64 *dlq_check_id_array(ArrayType *ids, int *nids);
extern char *dlq_default_channel(const char *queue);
extern void dlq_check_bindable_relation(Oid relid, Oid roleid);
extern void dlq_check_bindable_function(Oid funcid, Oid roleid);
extern char *dlq_role_search_path(Oid role);

/* The one table an isolate-mode intake view reads, or InvalidOid (util.c). */
extern Oid	dlq_intake_view_target(Relation view);

/* A plan prepared once and kept for the life of the backend (util.c). */
extern SPIPlanPtr dlq_prepare_kept(const char *sql, int nargs, Oid *types);

/* Run a kept plan; anything but expected_ret is an internal error (util.c). */
extern uint64 dlq_execute_kept(SPIPlanPtr plan, Datum *values, const char *nulls,
							   bool read_only, long tcount, int expected_ret);
/* The bigint first column of the last SPI result, into ids (util.c). */
extern int	dlq_spi_ids(int64 *ids);

/*
 * Run a kept plan again, under READ COMMITTED, when the message it waited
 * for moved away under it (always) or, with DLQ_RETRY_DEDUP, when a
 * concurrent store took a dedup_key it writes (util.c).
 */
#define DLQ_MOVED_RETRIES 10
#define DLQ_RETRY_DEDUP		0x01
extern uint64 dlq_execute_kept_retried(SPIPlanPtr plan, Datum *values, const char *nulls,
									   long tcount, int expected_ret, int retry_flags);
#define dlq_execute_kept_moved(plan, values, nulls, tcount, expected_ret) \
	dlq_execute_kept_retried(plan, values, nulls, tcount, expected_ret, 0)
extern uint64 dlq_execute_sql(const char *sql, int nargs, Oid *types, Datum *values,
							  const char *nulls, bool read_only, long tcount,
							  int expected_ret);

#if PG_VERSION_NUM < 150000
/* PostgreSQL 15's helper for materialized set-returning functions (util.c). */
extern void InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags);
#endif

/*
 * Audit trail (util.c): one row in dlq.events.  Must be called as the
 * owner, inside SPI.  ids may be NULL; they are recorded only when few.
 */
#define DLQ_AUDIT_MAX_IDS 100
extern void dlq_audit(const char *kind, const char *actor, const char *queue,
					  Datum request_id, bool has_request_id,
					  int64 count, const int64 *ids, int nids, Jsonb *detail);
extern Datum dlq_new_request_id(void);

/*
 * Storing a message (store.c); dlq_store() and the capture trigger both
 * come through here.  Must be called as the owner, inside SPI.
 */
typedef struct DlqStoreArgs
{
	const char *queue;
	const char *component;		/* or NULL */
	Jsonb	   *payload;
	const char *error;
	const char *sqlstate;		/* or NULL */
	Jsonb	   *error_detail;	/* or NULL */
	Jsonb	   *metadata;		/* or NULL */
	const char *dedup_key;		/* or NULL */
	Oid			source_relation;	/* or InvalidOid */
	const char *operation;		/* "INSERT", "UPDATE" or NULL */
	Oid			created_by;		/* the caller: creator of a new queue */
} DlqStoreArgs;

extern int64 dlq_store_message(const DlqStoreArgs *args);
extern void dlq_ensure_queue(const char *queue, Oid created_by);
/* Raise 22023 when a queue's components refuse a component (store.c). */
extern void dlq_check_component(const char *queue, const char *component);

/*
 * SQL: a message's error class under the overrides of its queue q (a
 * dlq.queues row alias), for a SQLSTATE expression (store.c,
 * dlq.sqlstate_class).
 */
#define DLQ_QUEUE_ERROR_CLASS(sqlstate, q) \
	"dlq.sqlstate_class(" sqlstate ", " q ".transient_sqlstates, " q ".permanent_sqlstates)"

/*
 * etl_status (status.c): thresholds of the health rules, and test-only
 * overrides of "now" and of the worker state (guc.c).
 */
typedef enum DlqStatusWorker
{
	DLQ_STATUS_WORKER_AUTO,
	DLQ_STATUS_WORKER_RUNNING,
	DLQ_STATUS_WORKER_STOPPED,
	DLQ_STATUS_WORKER_NOT_PRELOADED,
	DLQ_STATUS_WORKER_STANDBY
} DlqStatusWorker;

extern int	dlq_status_threshold;
extern int	dlq_stale_after;
extern int	dlq_syncing_window;
extern char *dlq_status_now;
extern int	dlq_status_worker;

/* At module load: the transaction callbacks that write dlq.counts (counts.c). */
extern void dlq_counts_init(void);

/*
 * A stage's source key range, read as the current user inside SPI
 * (stages.c); false, with a reason in *problem, when the source is gone.
 */
extern bool dlq_stage_source_range(Oid relid, const char *column, bool want_min,
								   bool *has_min, int64 *min, bool *has_max, int64 *max,
								   char **problem);

/*
 * Id arrays, tallies for the audit trail and JSON strings (util.c), shared
 * by replay, discard, resolve and the consumer functions.  All must be
 * called inside SPI; the SQL-running ones as the owner.
 */
/* Ids per SPI statement in bulk calls. */
#define DLQ_BATCH_IDS 1000

/* A count of messages and their first DLQ_AUDIT_MAX_IDS ids, for audit. */
typedef struct DlqIdTally
{
	int64		count;
	int64		ids[DLQ_AUDIT_MAX_IDS];
} DlqIdTally;

typedef struct DlqQueueTally
{
	char	   *queue;
	DlqIdTally	tally;
} DlqQueueTally;

extern Datum dlq_id_array_datum(const int64 *ids, int n);
extern int64 *dlq_id_array_values(ArrayType *array, int *n);
extern char *dlq_json_quote(const char *s);
extern Jsonb *dlq_jsonb(const char *json);
extern void dlq_tally_add(DlqIdTally *tally, int64 id);
extern void dlq_tally_audit(const DlqIdTally *tally, const char *kind, const char *actor,
							const char *queue, Datum request_id, Jsonb *detail);
extern DlqQueueTally *dlq_queue_tally(List **tallies, const char *queue);
extern int64 dlq_queue_tally_rows(List **tallies);

/* Queues (queue.c): raise 42704 unless the queue exists. */
extern void dlq_check_queue_exists(const char *queue);

/* The live-consumer registry (consumer.c), asked before a replay. */
extern bool dlq_consumer_alive(const char *queue);

/*
 * Background worker (worker.c): a launcher, registered when the library is
 * preloaded, starts one worker per database that has the extension.
 */
extern int	dlq_naptime;
extern int	dlq_batch_size;
extern int	dlq_replay_timeout;
extern int	dlq_events_retention;
extern int	dlq_partition_interval;
extern int	dlq_archive_interval;
extern char *dlq_databases;
extern char *dlq_worker_role;

/*
 * The worker's throttle (dlq.worker_cost_limit, dlq.worker_cost_delay): it
 * sleeps cost_delay after every cost_limit messages it handles.
 */
#define DLQ_WORKER_COST_LIMIT_DEFAULT 1000
#define DLQ_WORKER_COST_DELAY_DEFAULT 500
extern int	dlq_worker_cost_limit;
extern int	dlq_worker_cost_delay;

extern void dlq_define_worker_gucs(void);
extern void dlq_register_launcher(void);

#endif							/* DLQ_H */
