/*-------------------------------------------------------------------------
 *
 * edit.c
 *	  dlq_edit: fixing the payload of an open message before it is
 *	  replayed.
 *
 *	  Only a pending or review message may be edited: one being replayed
 *	  has been handed out (or is being re-applied) with its payload, and a
 *	  closed one is history.  The message is locked first, so an edit and a
 *	  concurrent replay, claim, resolve or discard of the same message take
 *	  turns: a replay that comes second hands out the new payload, an edit
 *	  that comes second finds the message no longer open and changes
 *	  nothing (55000).  The old payload is kept in the audit trail, in the
 *	  "edited" event's detail with the note; it is bounded by
 *	  dlq.max_payload_bytes like the new one.
 *
 *	  A row captured from a table (source_relation) is re-applied to that
 *	  table by a later replay, maybe by another operator or by the worker as
 *	  the queue's retry role.  So its editor must be able to write such a
 *	  row itself (INSERT on the table, no row-level security binding it
 *	  there: 42501), and the new payload must be a row of that table: a JSON
 *	  object keyed by its columns that converts into them (capture.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "capture.h"
#include "dlq.h"
#include "version.h"

static SPIPlanPtr edit_lock_plan = NULL;
static SPIPlanPtr edit_plan = NULL;

/* The message dlq_edit works on, as it was when locked. */
typedef struct EditTarget
{
	char	   *queue;
	char	   *status;
	Jsonb	   *old_payload;
	Oid			source;			/* source_relation, or InvalidOid */
} EditTarget;

/*
 * Lock the message and read what the edit needs.  A message closed or
 * moved by a transaction this one waited for is found where it went
 * (dlq_execute_kept_moved).  Raises 02000 for an unknown message and 55000
 * for one that is not pending or review.
 */
static void
edit_lock(int64 id, EditTarget *target)
{
	Datum		arg = Int64GetDatum(id);
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (edit_lock_plan == NULL)
	{
		Oid			types[1] = {INT8OID};

		edit_lock_plan = dlq_prepare_kept(
										  "SELECT m.status::text, m.queue, m.payload, m.source_relation"
										  " FROM dlq.messages m WHERE m.message_id = $1 FOR UPDATE",
										  1, types);
	}
	dlq_execute_kept_moved(edit_lock_plan, &arg, NULL, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA),
				 errmsg("message " INT64_FORMAT " does not exist", id),
				 errhint("It may have been discarded, or purged after its retention.")));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	target->status = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
	target->queue = TextDatumGetCString(SPI_getbinval(row, desc, 2, &isnull));
	target->old_payload = DatumGetJsonbPCopy(SPI_getbinval(row, desc, 3, &isnull));
	d = SPI_getbinval(row, desc, 4, &isnull);
	target->source = isnull ? InvalidOid : DatumGetObjectId(d);
	SPI_freetuptable(SPI_tuptable);

	if (strcmp(target->status, "pending") != 0 && strcmp(target->status, "review") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot edit message " INT64_FORMAT, id),
				 errdetail("Its status is \"%s\"; only pending and review messages can be edited.",
						   target->status),
				 strcmp(target->status, "replaying") == 0 ?
				 errhint("Edit it once its replay has ended (ack, nack or timeout).") : 0));
}

/*
 * A row captured from a table: may the caller write it there itself, and
 * is the new payload a row of that table?  Only such rows are re-applied,
 * with whoever replays them authorising the INSERT, so an editor must not
 * be able to put into the table what it could not insert.
 */
static void
edit_check_captured(Oid source, Oid caller, int64 id, Jsonb *payload)
{
	Relation	rel = try_relation_open(source, AccessShareLock);

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("cannot edit message " INT64_FORMAT, id),
				 errdetail("It was captured from table with OID %u, which no longer exists.",
						   source)));
	if (pg_class_aclcheck(source, caller, ACL_INSERT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to edit a row captured from table %s",
						RelationGetRelationName(rel)),
				 errdetail("A replay inserts the row into that table; editing it requires INSERT on the table.")));
	if (check_enable_rls(source, caller, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to edit a row captured from table %s",
						RelationGetRelationName(rel)),
				 errdetail("Row-level security applies to role \"%s\" on that table, and a replay inserts as the table's owner.",
						   GetUserNameFromId(caller, false))));
	dlq_reapply_check_payload(rel, payload);
	relation_close(rel, AccessShareLock);
}

/*
 * Set the new payload and return the message as dlq.message (tupdesc), with
 * an "edited" event holding the old payload and the note.
 */
static HeapTuple
edit_apply(int64 id, Jsonb *payload, const char *note, const EditTarget *target,
		   const char *actor, TupleDesc tupdesc, MemoryContext result_cxt)
{
	Datum		args[2];
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	result;
	MemoryContext old;
	char	   *detail;

	if (edit_plan == NULL)
	{
		Oid			types[2] = {INT8OID, JSONBOID};

		edit_plan = dlq_prepare_kept(dlq_schema_sql(
									 "UPDATE dlq.messages m SET payload = $2"
									 " WHERE m.message_id = $1[[ AND m.slot = 0]]"
									 " RETURNING " DLQ_MESSAGE_COLUMNS),
									 2, types);
	}
	args[0] = Int64GetDatum(id);
	args[1] = JsonbPGetDatum(payload);
	if (dlq_execute_kept(edit_plan, args, NULL, false, 0, SPI_OK_UPDATE_RETURNING) != 1)
		elog(ERROR, "could not edit message " INT64_FORMAT, id);
	if (SPI_tuptable->tupdesc->natts != tupdesc->natts)
		elog(ERROR, "dlq.message does not match dlq.messages");

	old = MemoryContextSwitchTo(result_cxt);
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);
	heap_deform_tuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, values, nulls);
	result = heap_form_tuple(tupdesc, values, nulls);
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);

	detail = psprintf("{\"old_payload\": %s, \"note\": %s}",
					  JsonbToCString(NULL, &target->old_payload->root,
									 VARSIZE(target->old_payload)),
					  note ? dlq_json_quote(note) : "null");
	dlq_audit("edited", actor, target->queue, dlq_new_request_id(), true, 1, &id, 1,
			  dlq_jsonb(detail));
	return result;
}

PG_FUNCTION_INFO_V1(dlq_edit);

/*
 * dlq_edit(message_id bigint, payload jsonb, note text) returns dlq.message
 *
 * Replace the payload of a pending or review message; the old one is kept
 * in the audit trail.  Returns the message as it is now.
 */
Datum
dlq_edit(PG_FUNCTION_ARGS)
{
	int64		id;
	Jsonb	   *payload;
	char	   *note = NULL;
	TupleDesc	tupdesc;
	DlqOwnerContext owner;
	EditTarget	target;
	HeapTuple	result;
	MemoryContext caller_cxt = CurrentMemoryContext;

	dlq_check_not_null(fcinfo, 0, "message_id");
	id = PG_GETARG_INT64(0);
	dlq_check_not_null(fcinfo, 1, "payload");
	payload = PG_GETARG_JSONB_P(1);
	dlq_check_payload_size("payload", VARSIZE(payload));
	if (!PG_ARGISNULL(2))
	{
		text	   *t = PG_GETARG_TEXT_PP(2);

		dlq_check_size("note", (struct varlena *) t);
		note = text_to_cstring(t);
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	dlq_become_owner(&owner);
	SPI_connect();
	dlq_require_current_schema();
	edit_lock(id, &target);
	if (OidIsValid(target.source))
		edit_check_captured(target.source, owner.caller, id, payload);
	result = edit_apply(id, payload, note, &target, GetUserNameFromId(owner.caller, false),
						tupdesc, caller_cxt);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}
