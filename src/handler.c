/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  Replay handlers, and catching each message's failure during a replay
 *	  with far fewer subtransactions than messages (handler.h).
 *
 *	  A queue's replay_handler is a function f(jsonb) or f(dlq.message);
 *	  replay.c calls it once per message, as the caller of the replay, and
 *	  its returning resolves the message.  It is looked up and the caller's
 *	  EXECUTE privilege checked once per queue per call (42883, 42501 for
 *	  the whole call), then called through fmgr without a query per message.
 *
 *	  Failure isolation (dlq_isolate_run) serves both kinds of replay: the
 *	  re-apply of a captured row and the handler call.  A batch's messages
 *	  run in subtransactions of run_size messages; a message's error rolls
 *	  its run back and the run is started again without it, shorter, so the
 *	  messages before it are re-run.  With few failures a replay pays about
 *	  one subtransaction per run_size messages plus one per failure; when
 *	  every message fails, run_size drops to 1 within a few messages and
 *	  each message costs one subtransaction, as an EXCEPTION block per
 *	  message would, never more.  A run re-executes at most its own length
 *	  per failure and its length halves at each failure, so the work stays
 *	  linear in the number of messages.  Runs also stay under about
 *	  DLQ_ISOLATE_RUN_BUDGET_US of work, so that with a slow handler a
 *	  failure re-runs little: a 1 ms handler runs about 10 calls per
 *	  subtransaction, a trivial one up to DLQ_ISOLATE_MAX_RUN.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "portability/instr_time.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "dlq.h"
#include "handler.h"

/* The longest error context kept in a failed handler call's error_detail. */
#define DLQ_HANDLER_CONTEXT_BYTES 1000

/* Runs executing now (a handler may start a replay only to be refused). */
static int	isolate_depth = 0;

void
dlq_isolate_init(DlqIsolate *iso)
{
	memset(iso, 0, sizeof(DlqIsolate));
	iso->run_size = DLQ_ISOLATE_START_RUN;
}

bool
dlq_isolate_active(void)
{
	return isolate_depth > 0;
}

/*
 * Run messages from..to-1 that have not failed in one subtransaction.
 * Returns -1 when it was released, or the index of the message whose error
 * rolled it back, recorded through fail.  Nothing to run: -1 at once.
 */
static int
isolate_try(DlqIsolate *iso, int from, int to, const bool *failed,
			DlqIsolateRunFn run, DlqIsolateFailFn fail, void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int current = -1;
	int			depth = isolate_depth;
	int			k = from;

	while (k < to && failed[k])
		k++;
	if (k == to)
		return -1;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	iso->subxacts++;
	isolate_depth = depth + 1;
	PG_TRY();
	{
		run(arg, from, to, failed, &current, &iso->executions);
		isolate_depth = depth;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int			index = current;

		isolate_depth = depth;
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		iso->rollbacks++;

		/*
		 * Like PL/pgSQL's WHEN OTHERS, every error is the message's but
		 * query cancel and the rest of class 57 (statement timeout, shutdown):
		 * those stop the call.  So does an error outside any message.
		 */
		if (index < 0 || ERRCODE_TO_CATEGORY(edata->sqlerrcode) ==
			ERRCODE_TO_CATEGORY(ERRCODE_QUERY_CANCELED) ||
			!fail(arg, index, edata))
			ReThrowError(edata);
		return index;
	}
	PG_END_TRY();
	return -1;
}

/*
 * The next run_size after a run without failure that ran executions
 * messages in elapsed: twice as long, but no longer than
 * DLQ_ISOLATE_RUN_BUDGET_US of such work.
 */
static int
isolate_grow(DlqIsolate *iso, instr_time elapsed, int64 executions)
{
	double		us = INSTR_TIME_GET_MICROSEC(elapsed);
	double		cap = DLQ_ISOLATE_MAX_RUN;

	if (us >= 1.0 && executions > 0)
		cap = Max(1.0, Min(cap, DLQ_ISOLATE_RUN_BUDGET_US * executions / us));
	return (int) Min(cap, iso->run_size * 2.0);
}

/*
 * Run n messages with their failures caught one by one (see the file's
 * header); run_size carries over from batch to batch of a call.
 */
void
dlq_isolate_run(DlqIsolate *iso, int n, DlqIsolateRunFn run,
				DlqIsolateFailFn fail, void *arg)
{
	bool	   *failed = palloc0(sizeof(bool) * Max(n, 1));
	int			pos = 0;

	while (pos < n)
	{
		int			stop = Min(n, pos + iso->run_size);
		bool		clean = true;
		int64		executions = iso->executions;
		instr_time	start;
		instr_time	elapsed;
		int			f;

		INSTR_TIME_SET_CURRENT(start);

		while ((f = isolate_try(iso, pos, stop, failed, run, fail, arg)) >= 0)
		{
			failed[f] = true;
			clean = false;
			iso->run_size = Max(1, iso->run_size / 2);
			stop = Min(stop, f + 1 + iso->run_size);
		}
		pos = stop;
		if (clean)
		{
			INSTR_TIME_SET_CURRENT(elapsed);
			INSTR_TIME_SUBTRACT(elapsed, start);
			iso->run_size = isolate_grow(iso, elapsed, iso->executions - executions);
		}
	}
	pfree(failed);
}

/* Has role EXECUTE on function fn? */
static bool
handler_may_execute(Oid fn, Oid role)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(ProcedureRelationId, fn, role, ACL_EXECUTE) == ACLCHECK_OK;
#else
	return pg_proc_aclcheck(fn, role, ACL_EXECUTE) == ACLCHECK_OK;
#endif
}

/* The row type of the view dlq.message. */
static Oid
handler_message_type(void)
{
	Oid			nsp = get_rel_namespace(dlq_messages_relid());

	return get_rel_type_id(get_relname_relid("message", nsp));
}

/*
 * Look up queue's replay handler fn for a replay by caller: it must exist
 * (42883: a dropped function leaves its OID behind in dlq.queues), take
 * one jsonb or dlq.message and return one value (22023; dlq_configure
 * checked it), and caller must have EXECUTE on it (42501).  It runs as its
 * owner, so that owner must still be bound_owner, the one who bound it
 * (42501): after ALTER FUNCTION ... OWNER TO or REASSIGN OWNED, the code its
 * old owner wrote would otherwise run with the new owner's privileges.
 * Once per queue per call, before anything changes.  The call's state
 * lives in cxt.
 */
void
dlq_handler_open(DlqHandler *h, Oid fn, Oid bound_owner, Oid caller, const char *queue,
				 MemoryContext cxt)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc proc;
	bool		usable;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("replay handler of queue \"%s\" does not exist", queue),
				 errdetail("Function with OID %u was dropped. Nothing was replayed.", fn),
				 errhint("Set another with dlq_configure('%s', replay_handler => ...), or none with replay_handler => 0.",
						 queue)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	h->fn = fn;
	h->whole_message = proc->pronargs == 1 && proc->proargtypes.values[0] != JSONBOID;
	h->owner = proc->proowner;
	if (h->owner != bound_owner)
	{
		char	   *name = format_procedure(fn);

		ReleaseSysCache(tup);
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("owner of replay handler %s of queue \"%s\" changed since it was bound",
						name, queue),
				 errdetail("A handler runs as its owner; its new owner did not bind it. Nothing was replayed."),
				 errhint("Its owner binds it again with dlq_configure('%s', replay_handler => '%s').",
						 queue, name)));
	}
	usable = proc->pronargs == 1 && proc->prokind == PROKIND_FUNCTION && !proc->proretset &&
		(!h->whole_message || proc->proargtypes.values[0] == handler_message_type());
	ReleaseSysCache(tup);
	h->name = MemoryContextStrdup(cxt, format_procedure(fn));
	if (!usable)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("replay handler %s of queue \"%s\" is not usable", h->name, queue),
				 errdetail("A replay handler is a function of one argument, jsonb or dlq.message, that does not return a set.")));
	if (!handler_may_execute(fn, caller))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to replay through function %s", h->name),
				 errdetail("Queue \"%s\" hands its messages to that function on behalf of the caller, which lacks EXECUTE on it. Nothing was replayed.",
						   queue)));
	h->search_path = MemoryContextStrdup(cxt, dlq_role_search_path(h->owner));
	fmgr_info_cxt(fn, &h->flinfo, cxt);
}

/*
 * Call the handler with one message (jsonb payload or dlq.message row);
 * its result is ignored, its error raised.  Inside a run.  The caller's
 * EXECUTE authorised it (dlq_handler_open); it runs as the function's
 * owner, who bound it, in a security-restricted operation with the owner's
 * search_path, the way a replay target's triggers run as the table's owner
 * (reapply.c): code someone else wrote never runs with the replaying
 * role's privileges, whoever replays (a superuser included).  A setting the
 * handler changes (even with a plain SET) ends with its call, as if the
 * function had a SET clause.  An error unwinds the user and the settings
 * with the run's subtransaction.
 */
void
dlq_handler_call(DlqHandler *h, Datum arg)
{
	LOCAL_FCINFO(fcinfo, 1);
	Oid			save_user;
	int			save_sec;
	int			nest_level = NewGUCNestLevel();

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(h->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	(void) set_config_option("search_path", h->search_path, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	InitFunctionCallInfoData(*fcinfo, &h->flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = arg;
	fcinfo->args[0].isnull = false;
	(void) FunctionCallInvoke(fcinfo);
	AtEOXact_GUC(false, nest_level);
	SetUserIdAndSecContext(save_user, save_sec);
}

/*
 * Why the worker may not call handler fn as role for automatic retries:
 * the function is gone or role lacks EXECUTE on it.  NULL when it may.
 */
const char *
dlq_handler_refusal(Oid fn, Oid role)
{
	if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(fn)))
		return psprintf("its replay handler, function with OID %u, no longer exists", fn);
	if (!handler_may_execute(fn, role))
		return psprintf("role \"%s\" lacks EXECUTE on function %s",
						GetUserNameFromId(role, false), format_procedure(fn));
	return NULL;
}

/* Append "name": value (a JSON string, or null) to buf. */
static void
handler_json_member(StringInfo buf, const char *name, const char *value)
{
	appendStringInfo(buf, "%s\"%s\": ", buf->len > 1 ? ", " : "", name);
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/*
 * error_detail of a failed handler call: the error's detail, hint and
 * context (clipped), and the handler.
 */
Jsonb *
dlq_handler_error_detail(const DlqHandler *h, const ErrorData *edata)
{
	StringInfoData buf;
	char	   *context = NULL;

	if (edata->context)
	{
		int			len = strlen(edata->context);

		context = pnstrdup(edata->context,
						   pg_mbcliplen(edata->context, len,
										Min(len, DLQ_HANDLER_CONTEXT_BYTES)));
	}
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	handler_json_member(&buf, "detail", edata->detail);
	handler_json_member(&buf, "hint", edata->hint);
	handler_json_member(&buf, "context", context);
	handler_json_member(&buf, "handler", h->name);
	appendStringInfoChar(&buf, '}');
	return dlq_jsonb(buf.data);
}
