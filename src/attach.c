/*-------------------------------------------------------------------------
 *
 * attach.c
 *	  dlq_attach and dlq_detach: set up and remove failed-row capture on a
 *	  table, and record the table as its queue's replay target.
 *
 *	  Only the table's owner (or a member of the owning role) may attach or
 *	  detach it: the triggers are created as the extension owner, so the
 *	  ownership check here is what stops a dlq_writer from putting triggers
 *	  on somebody else's table.  The isolate-mode intake view is created as
 *	  the caller, so that it belongs to the table's owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"

#include "dlq.h"

#if PG_VERSION_NUM >= 160000
#define dlq_rel_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#else
#define dlq_rel_ownercheck(relid, roleid) pg_class_ownercheck((relid), (roleid))
#endif

#define CAPTURE_TRIGGER_NAME "zzz_dlq_capture"
#define FLUSH_TRIGGER_NAME "zzz_dlq_capture_flush"
#define INTAKE_TRIGGER_NAME "dlq_intake"

/* Check that target is a table the caller owns; returns its relkind. */
static char
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
	return relkind;
}

/* Run one utility or DML statement built from quoted identifiers. */
static void
attach_exec(const char *sql, int expected)
{
	int			ret = SPI_execute(sql, false, 0);

	if (ret != expected)
		elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(ret));
}

/* Does relid have a trigger of that name? */
static bool
attach_has_trigger(Oid relid, const char *tgname)
{
	Oid			types[2] = {OIDOID, NAMEOID};
	Datum		values[2];
	int			ret;

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetDatum(tgname);
	ret = SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
								2, types, values, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "trigger lookup failed: %s", SPI_result_code_string(ret));
	return SPI_processed > 0;
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

/* Is relid attached in isolate mode (its intake view with our trigger)? */
static bool
attach_has_intake(Oid relid)
{
	Oid			viewid;

	if (strlen(get_rel_name(relid)) + strlen("_intake") >= NAMEDATALEN)
		return false;
	viewid = get_relname_relid(attach_intake_name(relid), get_rel_namespace(relid));
	return OidIsValid(viewid) && attach_has_trigger(viewid, INTAKE_TRIGGER_NAME);
}

static void
attach_audit(const char *actor, const char *queue, const char *what, Oid relid,
			 const char *mode)
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
	appendStringInfoChar(&buf, '}');
	dlq_audit("configured", actor, queue,
			  (Datum) 0, false, 0, NULL, 0,
			  DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data))));
}

PG_FUNCTION_INFO_V1(dlq_attach);

/*
 * dlq_attach(target regclass, queue text DEFAULT NULL,
 *			  mode text DEFAULT 'validate') returns text (the queue)
 */
Datum
dlq_attach(PG_FUNCTION_ARGS)
{
	Oid			relid;
	const char *queue;
	char	   *mode;
	char	   *qualified;
	char	   *nspname;
	char	   *schema = get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid));
	DlqOwnerContext owner;
	Oid			types[2] = {REGCLASSOID, TEXTOID};
	Datum		values[2];
	int			ret;

	dlq_check_not_null(fcinfo, 0, "target");
	dlq_check_not_null(fcinfo, 2, "mode");
	relid = PG_GETARG_OID(0);
	mode = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (strcmp(mode, "validate") != 0 && strcmp(mode, "isolate") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown capture mode \"%s\"", mode),
				 errhint("Use 'validate' or 'isolate'.")));
	(void) attach_check_target(relid);
	queue = PG_ARGISNULL(1) ?
		dlq_check_name("queue name", cstring_to_text(get_rel_name(relid)), false) :
		dlq_check_name("queue name", PG_GETARG_TEXT_PP(1), false);

	nspname = get_namespace_name(get_rel_namespace(relid));
	qualified = quote_qualified_identifier(nspname, get_rel_name(relid));

	SPI_connect();
	if (attach_has_trigger(relid, CAPTURE_TRIGGER_NAME) ||
		attach_has_intake(relid))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already attached to the DLQ", get_rel_name(relid)),
				 errhint("Call dlq_detach first to change its queue or mode.")));

	if (strcmp(mode, "isolate") == 0)
	{
		char	   *view = attach_intake_name(relid);
		Oid			viewid = get_relname_relid(view, get_rel_namespace(relid));
		StringInfoData cols;
		TupleDesc	tupdesc;
		Relation	rel;

		if (OidIsValid(viewid))
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
		attach_exec(psprintf("CREATE VIEW %s AS SELECT %s FROM %s x WHERE false",
							 quote_qualified_identifier(nspname, view), cols.data, qualified),
					SPI_OK_UTILITY);
		dlq_become_owner(&owner);
		attach_exec(psprintf("CREATE TRIGGER %s INSTEAD OF INSERT ON %s FOR EACH ROW"
							 " EXECUTE FUNCTION %s.dlq_capture_isolate(%s, '%u')",
							 INTAKE_TRIGGER_NAME, quote_qualified_identifier(nspname, view),
							 quote_identifier(schema), quote_literal_cstr(queue), relid),
					SPI_OK_UTILITY);
		/* Marks the table as attached, but never diverts: see dlq_capture. */
	}
	else
		dlq_become_owner(&owner);

	if (strcmp(mode, "validate") == 0)
	{
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

	dlq_ensure_queue(queue);
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(queue);
	ret = SPI_execute_with_args("UPDATE dlq.queues SET replay_target = $1 WHERE queue = $2"
								" AND (replay_target IS NULL OR replay_target = $1)",
								2, types, values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not record the replay target: %s", SPI_result_code_string(ret));
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" already replays into another table", queue),
				 errhint("Attach the table with a queue of its own.")));
	attach_audit(GetUserNameFromId(owner.caller, false), queue, "attached", relid, mode);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_TEXT_P(cstring_to_text(queue));
}

PG_FUNCTION_INFO_V1(dlq_detach);

/*
 * dlq_detach(target regclass) returns void: drops the capture trigger or
 * the intake view and clears the replay target of the table's queues.
 * Captured messages stay.
 */
Datum
dlq_detach(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *nspname;
	char	   *view;
	Oid			viewid;
	bool		found = false;
	DlqOwnerContext owner;
	Oid			types[1] = {REGCLASSOID};
	Datum		values[1];
	int			ret;

	dlq_check_not_null(fcinfo, 0, "target");
	relid = PG_GETARG_OID(0);
	(void) attach_check_target(relid);
	nspname = get_namespace_name(get_rel_namespace(relid));
	view = strlen(get_rel_name(relid)) + strlen("_intake") < NAMEDATALEN ?
		attach_intake_name(relid) : NULL;
	viewid = view ? get_relname_relid(view, get_rel_namespace(relid)) : InvalidOid;

	dlq_become_owner(&owner);
	SPI_connect();
	if (attach_has_trigger(relid, CAPTURE_TRIGGER_NAME))
	{
		attach_exec(psprintf("DROP TRIGGER %s ON %s", CAPTURE_TRIGGER_NAME,
							 quote_qualified_identifier(nspname, get_rel_name(relid))),
					SPI_OK_UTILITY);
		attach_exec(psprintf("DROP TRIGGER IF EXISTS %s ON %s", FLUSH_TRIGGER_NAME,
							 quote_qualified_identifier(nspname, get_rel_name(relid))),
					SPI_OK_UTILITY);
		found = true;
	}
	if (OidIsValid(viewid) && attach_has_trigger(viewid, INTAKE_TRIGGER_NAME))
	{
		attach_exec(psprintf("DROP VIEW %s", quote_qualified_identifier(nspname, view)),
					SPI_OK_UTILITY);
		found = true;
	}
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not attached to the DLQ", get_rel_name(relid))));

	values[0] = ObjectIdGetDatum(relid);
	ret = SPI_execute_with_args("UPDATE dlq.queues SET replay_target = NULL WHERE replay_target = $1"
								" RETURNING queue",
								1, types, values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not clear the replay target: %s", SPI_result_code_string(ret));
	{
		List	   *queues = NIL;
		ListCell   *lc;

		for (uint64 i = 0; i < SPI_processed; i++)
			queues = lappend(queues, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		foreach(lc, queues)
			attach_audit(GetUserNameFromId(owner.caller, false), lfirst(lc), "detached", relid, NULL);
	}
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_VOID();
}
