/*-------------------------------------------------------------------------
 *
 * attach.c
 *	  dlq_attach and dlq_detach: set up and remove failed-row capture on a
 *	  table, and record the table as its queue's replay target.
 *
 *	  Binding a queue to a table makes dlq write into that table later, so
 *	  dlq_attach requires owning the table (dlq_check_bindable_relation,
 *	  which also refuses system catalogs and dlq's own tables), and a queue
 *	  that exists already must be unbound and created by the caller: nobody
 *	  binds their table to somebody else's queue and so receives its
 *	  payloads on replay.  The capture triggers are created as the extension
 *	  owner (the caller may lack EXECUTE on the trigger functions); the
 *	  isolate-mode intake view is created as the caller, so that it belongs
 *	  to the table's owner.
 *
 *	  dlq_detach removes only what dlq_attach made: triggers of that name
 *	  that run dlq_capture, and the view that reads the table and has the
 *	  dlq_intake trigger running dlq_capture_isolate, found by what it is
 *	  (through its query, so also after a rename or a restore) and not by
 *	  its name.  It drops them as the caller, who must own them; nothing is
 *	  dropped unless everything may be.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "storage/lmgr.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "dlq.h"
#include "version.h"

#if PG_VERSION_NUM >= 160000
#define dlq_rel_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#else
#define dlq_rel_ownercheck(relid, roleid) pg_class_ownercheck((relid), (roleid))
#endif

#define CAPTURE_TRIGGER_NAME "zzz_dlq_capture"
#define FLUSH_TRIGGER_NAME "zzz_dlq_capture_flush"
#define INTAKE_TRIGGER_NAME "dlq_intake"
#define LIMITS_TRIGGER_NAME "zzz_dlq_capture_limits"
#define INTAKE_LIMITS_TRIGGER_NAME "dlq_intake_limits"
#define INTAKE_LIMITS_END_TRIGGER_NAME "dlq_intake_limits_end"

/*
 * dlq_detach's check: target is a table the caller owns.  Unlike binding,
 * unbinding does not refuse dlq's tables, so that one attached by 1.0 can
 * still be detached.
 */
static void
attach_check_target(Oid relid)
{
	char		relkind = get_rel_relkind(relid);
	char	   *name = get_rel_name(relid);

	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", name),
				 errdetail("Failed-row capture works on tables and partitioned tables only.")));
	if (!dlq_rel_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, name);
}

/*
 * Lock the table against concurrent attach, detach, rename and drop, once
 * check() has passed (so that nobody can lock a table merely by naming it),
 * and check again: it may have changed while we waited.
 */
static void
attach_lock_target(Oid relid, void (*check) (Oid relid))
{
	check(relid);
	LockRelationOid(relid, ShareRowExclusiveLock);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	check(relid);
}

static void
attach_check_bindable(Oid relid)
{
	dlq_check_bindable_relation(relid, GetUserId());
}

/* Run one utility or DML statement built from quoted identifiers. */
static void
attach_exec(const char *sql, int expected)
{
	int			ret = SPI_execute(sql, false, 0);

	if (ret != expected)
		elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(ret));
}

/* The OID of trigger function fname() in dlq's schema. */
static Oid
attach_trigger_function(const char *schema, const char *fname)
{
	return LookupFuncName(list_make2(makeString(pstrdup(schema)), makeString(pstrdup(fname))),
						  0, NULL, false);
}

/*
 * Does relid have a trigger of that name running funcoid?  With
 * own_only, triggers cloned from a partitioned parent do not count (they
 * go with the parent's).  Runs as the owner, inside SPI.
 */
static bool
attach_has_trigger(Oid relid, const char *tgname, Oid funcoid, bool own_only)
{
	Oid			types[3] = {OIDOID, NAMEOID, OIDOID};
	Datum		values[3];

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetDatum(tgname);
	values[2] = ObjectIdGetDatum(funcoid);
	dlq_execute_sql(own_only ?
					"SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2"
					" AND tgfoid = $3 AND tgparentid = 0" :
					"SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2"
					" AND tgfoid = $3",
					3, types, values, NULL, true, 1, SPI_OK_SELECT);
	return SPI_processed > 0;
}

/*
 * Is viewid the intake view dlq_attach made for relid: a view that reads
 * relid and no other table, with the dlq_intake trigger running
 * dlq_capture_isolate?  The table is the one the view's query reads, as for
 * the trigger itself (capture.c), not the one its arguments name: an OID
 * written there before 1.1 names nothing, or another table, after a dump
 * and restore.
 */
static bool
attach_is_intake_of(Oid viewid, Oid relid, Oid isolate_oid)
{
	Relation	view = relation_open(viewid, AccessShareLock);
	bool		found = false;

	if (view->trigdesc != NULL && dlq_intake_view_target(view) == relid)
	{
		for (int i = 0; i < view->trigdesc->numtriggers && !found; i++)
		{
			Trigger    *tg = &view->trigdesc->triggers[i];

			found = strcmp(tg->tgname, INTAKE_TRIGGER_NAME) == 0 &&
				tg->tgfoid == isolate_oid && tg->tgnargs >= 2;
		}
	}
	relation_close(view, AccessShareLock);
	return found;
}

/*
 * The intake view dlq_attach made for relid, or InvalidOid: a view whose
 * query reads relid and whose dlq_intake trigger runs dlq_capture_isolate.
 * Found by what it is, whatever it and the table are called now, and in a
 * restored database too.  Runs as the owner, inside SPI.
 */
static Oid
attach_find_intake(Oid relid, Oid isolate_oid)
{
	Oid			types[3] = {OIDOID, NAMEOID, OIDOID};
	Datum		values[3];
	List	   *candidates = NIL;
	ListCell   *lc;

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetDatum(INTAKE_TRIGGER_NAME);
	values[2] = ObjectIdGetDatum(isolate_oid);
	dlq_execute_sql("SELECT DISTINCT t.tgrelid FROM pg_catalog.pg_trigger t"
					" JOIN pg_catalog.pg_rewrite r ON r.ev_class = t.tgrelid"
					" JOIN pg_catalog.pg_depend d ON d.objid = r.oid"
					"  AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass"
					" WHERE t.tgname = $2 AND t.tgfoid = $3"
					"  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass"
					"  AND d.refobjid = $1"
					" ORDER BY 1",
					3, types, values, NULL, true, 0, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		candidates = lappend_oid(candidates,
								 DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
																SPI_tuptable->tupdesc, 1, &isnull)));
	}
	foreach(lc, candidates)
		if (attach_is_intake_of(lfirst_oid(lc), relid, isolate_oid))
			return lfirst_oid(lc);
	return InvalidOid;
}

/* The intake view of a table: <table>_intake in the table's schema. */
static char *
attach_intake_name(Oid relid)
{
	char	   *relname = get_rel_name(relid);

	if (strlen(relname) + strlen("_intake") >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("intake view name \"%s_intake\" is too long", relname),
				 errhint("Rename the table to at most %d bytes to use isolate mode.",
						 NAMEDATALEN - 1 - (int) strlen("_intake"))));
	return psprintf("%s_intake", relname);
}

/*
 * May caller bind relid to queue?  The queue exists (dlq_ensure_queue ran,
 * recording caller as the creator of a new one); its row is locked here
 * until the end of the transaction.  Runs as the owner, inside SPI.
 */
static void
attach_check_queue(const char *queue, Oid relid, Oid caller)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		target_null;
	bool		creator_null;
	Oid			target;
	Oid			creator;

	values[0] = CStringGetTextDatum(queue);
	if (dlq_execute_sql("SELECT replay_target, created_by, replay_handler IS NOT NULL"
						" FROM dlq.queues WHERE queue = $1 FOR UPDATE",
						1, types, values, NULL, false, 1, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not read queue \"%s\"", queue);
	target = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											1, &target_null));
	creator = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											 2, &creator_null));

	if (creator_null && !superuser_arg(caller))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot attach a table to queue \"%s\"", queue),
				 errdetail("The queue was created before dlq 1.1, so its creator is not known; only a superuser may attach a table to it."),
				 errhint("Attach the table with a queue of its own.")));
	if (!creator_null && !has_privs_of_role(caller, creator))
	{
		char	   *creator_name = GetUserNameFromId(creator, true);

		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot attach a table to queue \"%s\"", queue),
				 errdetail("Only the role that created the queue may attach a table to it; role \"%s\" did.",
						   creator_name ? creator_name : "(dropped)"),
				 errhint("Attach the table with a queue of its own.")));
	}
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
								   &creator_null)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" replays through a handler", queue),
				 errdetail("A queue replays into a table or through a replay handler, not both."),
				 errhint("Attach the table with a queue of its own.")));
	if (!target_null && target != relid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" already replays into another table", queue),
				 errhint("Attach the table with a queue of its own.")));
}

/*
 * Reject limits (capture.c): dlq_attach's max_errors and max_error_ratio
 * live in the arguments of a BEFORE ... FOR EACH STATEMENT trigger running
 * dlq_capture, on the table in validate mode, on the intake view in isolate
 * mode (with an AFTER STATEMENT companion there, which the table has
 * already): they go with the table through pg_dump, cost nothing to read
 * and go away with dlq_detach.  -1 is "no limit".
 */
typedef struct AttachLimits
{
	int64		max_errors;
	double		max_error_ratio;
} AttachLimits;

static void
attach_check_limits(FunctionCallInfo fcinfo, AttachLimits *limits)
{
	limits->max_errors = -1;
	limits->max_error_ratio = -1;
	/* 1.0's dlq_attach has three arguments */
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
	{
		limits->max_errors = PG_GETARG_INT64(3);
		if (limits->max_errors < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_errors must be at least 0"),
					 errhint("NULL sets no limit; 0 fails a statement at its first failed row.")));
	}
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
	{
		limits->max_error_ratio = PG_GETARG_FLOAT8(4);
		if (!(limits->max_error_ratio >= 0 && limits->max_error_ratio < 1))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_error_ratio must be at least 0 and less than 1"),
					 errhint("NULL sets no limit.")));
	}
}

/* The trigger arguments of limits: ", 'max_errors=n', 'max_error_ratio=r'". */
static char *
attach_limits_args(const AttachLimits *limits)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (limits->max_errors >= 0)
		appendStringInfo(&buf, ", 'max_errors=" INT64_FORMAT "'", limits->max_errors);
	if (limits->max_error_ratio >= 0)
		appendStringInfo(&buf, ", 'max_error_ratio=%s'",
						 float8out_internal(limits->max_error_ratio));
	return buf.data;
}

/* Drop trigger tgname on relname if relid has it, running capture_oid. */
static void
attach_drop_trigger(Oid relid, const char *relname, const char *tgname, Oid capture_oid)
{
	if (attach_has_trigger(relid, tgname, capture_oid, true))
		attach_exec(psprintf("DROP TRIGGER %s ON %s", tgname, relname), SPI_OK_UTILITY);
}

/*
 * Set the reject limits of relid (validate mode) or of its intake view
 * viewid (isolate mode), replacing any it has.  As the owner, inside SPI.
 */
static void
attach_set_limits(Oid relid, Oid viewid, const char *queue, const char *schema,
				  const AttachLimits *limits)
{
	Oid			capture_oid = attach_trigger_function(schema, "dlq_capture");
	Oid			on = OidIsValid(viewid) ? viewid : relid;
	char	   *onname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(on)),
													get_rel_name(on));
	const char *begin = OidIsValid(viewid) ? INTAKE_LIMITS_TRIGGER_NAME : LIMITS_TRIGGER_NAME;
	const char *func = psprintf("%s.dlq_capture", quote_identifier(schema));

	attach_drop_trigger(on, onname, begin, capture_oid);
	if (OidIsValid(viewid))
		attach_drop_trigger(on, onname, INTAKE_LIMITS_END_TRIGGER_NAME, capture_oid);
	if (limits->max_errors < 0 && limits->max_error_ratio < 0)
		return;
	attach_exec(psprintf("CREATE TRIGGER %s BEFORE %s ON %s FOR EACH STATEMENT"
						 " EXECUTE FUNCTION %s(%s%s)",
						 begin, OidIsValid(viewid) ? "INSERT" : "INSERT OR UPDATE", onname,
						 func, quote_literal_cstr(queue), attach_limits_args(limits)),
				SPI_OK_UTILITY);
	/* The table's flush trigger ends its statements; the view needs one. */
	if (OidIsValid(viewid))
		attach_exec(psprintf("CREATE TRIGGER %s AFTER INSERT ON %s FOR EACH STATEMENT"
							 " EXECUTE FUNCTION %s(%s)",
							 INTAKE_LIMITS_END_TRIGGER_NAME, onname, func,
							 quote_literal_cstr(queue)),
					SPI_OK_UTILITY);
}

/*
 * The queue of trigger tgname running funcoid on relid, when relid has one
 * of its own (not cloned from a partitioned parent); NULL otherwise.
 */
static char *
attach_trigger_queue(Oid relid, const char *tgname, Oid funcoid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	char	   *queue = NULL;

	for (int i = 0; rel->trigdesc != NULL && i < rel->trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &rel->trigdesc->triggers[i];

		if (strcmp(tg->tgname, tgname) == 0 && tg->tgfoid == funcoid &&
			!tg->tgisclone && tg->tgnargs >= 1)
			queue = pstrdup(tg->tgargs[0]);
	}
	relation_close(rel, AccessShareLock);
	return queue;
}

/*
 * Audit attach and detach; limits (or NULL) adds the reject limits, null
 * for none, to an attach that sets or changes them.
 */
static void
attach_audit(const char *actor, const char *queue, const char *what, Oid relid,
			 const char *mode, const AttachLimits *limits)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"%s\": ", what);
	escape_json(&buf, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												 get_rel_name(relid)));
	if (mode)
	{
		appendStringInfoString(&buf, ", \"mode\": ");
		escape_json(&buf, mode);
	}
	if (limits != NULL)
	{
		appendStringInfoString(&buf, ", \"max_errors\": ");
		if (limits->max_errors >= 0)
			appendStringInfo(&buf, INT64_FORMAT, limits->max_errors);
		else
			appendStringInfoString(&buf, "null");
		appendStringInfo(&buf, ", \"max_error_ratio\": %s",
						 limits->max_error_ratio >= 0 ?
						 float8out_internal(limits->max_error_ratio) : "null");
	}
	appendStringInfoChar(&buf, '}');
	dlq_audit("configured", actor, queue,
			  (Datum) 0, false, 0, NULL, 0,
			  dlq_jsonb(buf.data));
}

/*
 * dlq_attach on a table attached already: with the same mode and queue
 * (queue NULL: the one it has), its reject limits become the ones given;
 * anything else needs dlq_detach first.  Only the table's owner gets here
 * (attach_lock_target), and the queue's binding does not change, so its
 * creator is not asked.  As the owner, inside SPI.
 */
static const char *
attach_change_limits(Oid relid, const char *queue, const char *mode, Oid viewid,
					 const char *schema, const AttachLimits *limits, Oid caller)
{
	bool		isolate = strcmp(mode, "isolate") == 0;
	char	   *attached_queue = NULL;

	if (isolate == OidIsValid(viewid))
		attached_queue = isolate ?
			attach_trigger_queue(viewid, INTAKE_TRIGGER_NAME,
								 attach_trigger_function(schema, "dlq_capture_isolate")) :
			attach_trigger_queue(relid, CAPTURE_TRIGGER_NAME,
								 attach_trigger_function(schema, "dlq_capture"));
	if (attached_queue == NULL || (queue != NULL && strcmp(queue, attached_queue) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already attached to the DLQ", get_rel_name(relid)),
				 errhint("Call dlq_detach first to change its queue or mode.")));
	/* The intake view's triggers change: its owner's call, as for detach. */
	if (OidIsValid(viewid) && !dlq_rel_ownercheck(viewid, caller))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of view %s", get_rel_name(viewid)),
				 errdetail("The reject limits of table \"%s\" are on its intake view, which role \"%s\" owns.",
						   get_rel_name(relid), GetUserNameFromId(dlq_rel_owner(viewid), false))));
	attach_set_limits(relid, viewid, attached_queue, schema, limits);
	attach_audit(GetUserNameFromId(caller, false), attached_queue, "attached", relid, mode,
				 limits);
	return attached_queue;
}

/*
 * isolate mode: the intake view (as the caller) and its trigger (as the
 * owner); returns the view.
 */
static Oid
attach_isolate(Oid relid, const char *queue, const char *schema, DlqOwnerContext *owner)
{
	char	   *nspname = get_namespace_name(get_rel_namespace(relid));
	char	   *view = attach_intake_name(relid);
	StringInfoData cols;
	TupleDesc	tupdesc;
	Relation	rel;
	DlqCallerScope scope;

	if (OidIsValid(get_relname_relid(view, get_rel_namespace(relid))))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", view),
				 errhint("Call dlq_detach first, or drop or rename \"%s\".", view)));

	/* Every column as text, json kept as is: the staging shape of a CSV. */
	initStringInfo(&cols);
	rel = relation_open(relid, AccessShareLock);
	tupdesc = RelationGetDescr(rel);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		const char *name = quote_identifier(NameStr(att->attname));

		if (att->attisdropped || att->attgenerated != '\0')
			continue;
		if (att->atttypid == JSONOID || att->atttypid == JSONBOID)
			appendStringInfo(&cols, "%sx.%s", cols.len > 0 ? ", " : "", name);
		else
			appendStringInfo(&cols, "%sx.%s::pg_catalog.text AS %s",
							 cols.len > 0 ? ", " : "", name, name);
	}
	relation_close(rel, AccessShareLock);

	/* The view belongs to the caller, who owns the table. */
	dlq_as_caller_begin(owner, &scope);
	attach_exec(psprintf("CREATE VIEW %s AS SELECT %s FROM %s x WHERE false",
						 quote_qualified_identifier(nspname, view), cols.data,
						 quote_qualified_identifier(nspname, get_rel_name(relid))),
				SPI_OK_UTILITY);
	dlq_as_caller_end(&scope);
	/*
	 * Its rows go to the table the view reads; the table's name is there
	 * for people reading the trigger (capture.c reads the view).
	 */
	attach_exec(psprintf("CREATE TRIGGER %s INSTEAD OF INSERT ON %s FOR EACH ROW"
						 " EXECUTE FUNCTION %s.dlq_capture_isolate(%s, %s)",
						 INTAKE_TRIGGER_NAME, quote_qualified_identifier(nspname, view),
						 quote_identifier(schema), quote_literal_cstr(queue),
						 quote_literal_cstr(quote_qualified_identifier(nspname, get_rel_name(relid)))),
				SPI_OK_UTILITY);
	return get_relname_relid(view, get_rel_namespace(relid));
}

/* validate mode: the row trigger and its AFTER STATEMENT flush, as the owner. */
static void
attach_validate(Oid relid, const char *queue, const char *schema)
{
	char	   *qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													   get_rel_name(relid));

	attach_exec(psprintf("CREATE TRIGGER %s BEFORE INSERT OR UPDATE ON %s FOR EACH ROW"
						 " EXECUTE FUNCTION %s.dlq_capture(%s)",
						 CAPTURE_TRIGGER_NAME, qualified, quote_identifier(schema),
						 quote_literal_cstr(queue)),
				SPI_OK_UTILITY);
	/* Stores the statement's diverted rows in one go; see capture.c. */
	attach_exec(psprintf("CREATE TRIGGER %s AFTER INSERT OR UPDATE ON %s FOR EACH STATEMENT"
						 " EXECUTE FUNCTION %s.dlq_capture(%s)",
						 FLUSH_TRIGGER_NAME, qualified, quote_identifier(schema),
						 quote_literal_cstr(queue)),
				SPI_OK_UTILITY);
}

/*
 * Attach relid, which is not attached yet, to queue.  As the owner, inside
 * SPI.
 */
static void
attach_new(Oid relid, const char *queue, const char *mode, const char *schema,
		   DlqOwnerContext *owner, const AttachLimits *limits)
{
	Oid			types[3] = {REGCLASSOID, TEXTOID, REGROLEOID};
	Datum		values[3];
	bool		has_limits = limits->max_errors >= 0 || limits->max_error_ratio >= 0;

	/* A new queue is the caller's; an existing one must be and be unbound. */
	dlq_ensure_queue(queue, owner->caller);
	attach_check_queue(queue, relid, owner->caller);

	if (strcmp(mode, "isolate") == 0)
		attach_set_limits(relid, attach_isolate(relid, queue, schema, owner), queue, schema,
						  limits);
	else
	{
		attach_validate(relid, queue, schema);
		attach_set_limits(relid, InvalidOid, queue, schema, limits);
	}

	/*
	 * Automatic retries run as retry_role: an operator who turned them on
	 * for this queue never agreed to write into this table, so the binding
	 * keeps the role only when it is the caller's own.
	 */
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(queue);
	values[2] = ObjectIdGetDatum(owner->caller);
	if (dlq_execute_sql("UPDATE dlq.queues SET replay_target = $1,"
						" retry_role = CASE WHEN retry_role = $3 THEN retry_role END"
						" WHERE queue = $2",
						3, types, values, NULL, false, 0, SPI_OK_UPDATE) != 1)
		elog(ERROR, "could not record the replay target");
	attach_audit(GetUserNameFromId(owner->caller, false), queue, "attached", relid, mode,
				 has_limits ? limits : NULL);
}

PG_FUNCTION_INFO_V1(dlq_attach);

/*
 * dlq_attach(target regclass, queue text DEFAULT NULL,
 *			  mode text DEFAULT 'validate', max_errors bigint DEFAULT NULL,
 *			  max_error_ratio double precision DEFAULT NULL) returns text
 *			  (the queue)
 *
 * On a table attached already, with the same queue and mode, it sets the
 * reject limits (attach_change_limits).
 */
Datum
dlq_attach(PG_FUNCTION_ARGS)
{
	Oid			relid;
	const char *queue;
	char	   *mode;
	char	   *schema = get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid));
	DlqOwnerContext owner;
	AttachLimits limits;
	Oid			viewid;

	/* created_by is a column of the 1.1 schema. */
	dlq_require_current_schema();
	dlq_check_not_null(fcinfo, 0, "target");
	dlq_check_not_null(fcinfo, 2, "mode");
	relid = PG_GETARG_OID(0);
	mode = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (strcmp(mode, "validate") != 0 && strcmp(mode, "isolate") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown capture mode \"%s\"", mode),
				 errhint("Use 'validate' or 'isolate'.")));
	attach_check_limits(fcinfo, &limits);
	attach_lock_target(relid, attach_check_bindable);
	queue = PG_ARGISNULL(1) ? NULL : dlq_check_name("queue name", PG_GETARG_TEXT_PP(1), false);

	dlq_become_owner(&owner);
	SPI_connect();
	viewid = attach_find_intake(relid, attach_trigger_function(schema, "dlq_capture_isolate"));
	if (attach_has_trigger(relid, CAPTURE_TRIGGER_NAME,
						   attach_trigger_function(schema, "dlq_capture"), false) ||
		OidIsValid(viewid))
		queue = attach_change_limits(relid, queue, mode, viewid, schema, &limits,
									 owner.caller);
	else
	{
		if (queue == NULL)
			queue = dlq_check_name("queue name", cstring_to_text(get_rel_name(relid)), false);
		attach_new(relid, queue, mode, schema, &owner, &limits);
	}
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_TEXT_P(cstring_to_text(queue));
}

PG_FUNCTION_INFO_V1(dlq_detach);

/*
 * dlq_detach(target regclass) returns void: drops the capture triggers or
 * the intake view dlq_attach made, as the caller, and clears the replay
 * target of the table's queues.  Captured messages stay.
 */
Datum
dlq_detach(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *schema = get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid));
	char	   *qualified;
	Oid			capture_oid;
	bool		capture;
	bool		flush;
	bool		limits;
	Oid			viewid;
	DlqOwnerContext owner;
	DlqCallerScope scope;
	Oid			types[1] = {REGCLASSOID};
	Datum		values[1];

	dlq_check_not_null(fcinfo, 0, "target");
	relid = PG_GETARG_OID(0);
	attach_lock_target(relid, attach_check_target);
	qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
										   get_rel_name(relid));

	dlq_become_owner(&owner);
	SPI_connect();
	capture_oid = attach_trigger_function(schema, "dlq_capture");
	capture = attach_has_trigger(relid, CAPTURE_TRIGGER_NAME, capture_oid, true);
	flush = attach_has_trigger(relid, FLUSH_TRIGGER_NAME, capture_oid, true);
	limits = attach_has_trigger(relid, LIMITS_TRIGGER_NAME, capture_oid, true);
	viewid = attach_find_intake(relid, attach_trigger_function(schema, "dlq_capture_isolate"));
	if (!capture && !flush && !limits && !OidIsValid(viewid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not attached to the DLQ", get_rel_name(relid))));

	/* Everything is checked before anything is dropped. */
	if (OidIsValid(viewid))
	{
		if (!dlq_rel_ownercheck(viewid, owner.caller))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of view %s", get_rel_name(viewid)),
					 errdetail("dlq_detach drops the intake view of table \"%s\" as its owner, role \"%s\".",
							   get_rel_name(relid),
							   GetUserNameFromId(dlq_rel_owner(viewid), false))));
		LockRelationOid(viewid, AccessExclusiveLock);
	}

	dlq_as_caller_begin(&owner, &scope);
	if (capture)
		attach_exec(psprintf("DROP TRIGGER %s ON %s", CAPTURE_TRIGGER_NAME, qualified),
					SPI_OK_UTILITY);
	if (flush)
		attach_exec(psprintf("DROP TRIGGER %s ON %s", FLUSH_TRIGGER_NAME, qualified),
					SPI_OK_UTILITY);
	if (limits)
		attach_exec(psprintf("DROP TRIGGER %s ON %s", LIMITS_TRIGGER_NAME, qualified),
					SPI_OK_UTILITY);
	if (OidIsValid(viewid))
		attach_exec(psprintf("DROP VIEW %s",
							 quote_qualified_identifier(get_namespace_name(get_rel_namespace(viewid)),
														get_rel_name(viewid))),
					SPI_OK_UTILITY);
	dlq_as_caller_end(&scope);

	values[0] = ObjectIdGetDatum(relid);
	dlq_execute_sql("UPDATE dlq.queues SET replay_target = NULL WHERE replay_target = $1"
					" RETURNING queue",
					1, types, values, NULL, false, 0, SPI_OK_UPDATE_RETURNING);
	{
		List	   *queues = NIL;
		ListCell   *lc;

		for (uint64 i = 0; i < SPI_processed; i++)
			queues = lappend(queues, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		foreach(lc, queues)
			attach_audit(GetUserNameFromId(owner.caller, false), lfirst(lc), "detached", relid,
						 NULL, NULL);
	}
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_VOID();
}
