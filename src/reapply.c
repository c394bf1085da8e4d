/*-------------------------------------------------------------------------
 *
 * reapply.c
 *	  Re-applying a stored row to its table: dlq_reapply_row, which replay
 *	  (replay.c) calls for a message the capture trigger stored.
 *
 *	  The payload (a JSON object keyed by column name) is converted back
 *	  into the table's row type, in C when every column has a scalar type
 *	  and through jsonb_populate_record otherwise.  The row is checked with
 *	  the capture trigger's own prediction (capture_predict.c), then
 *	  inserted through SPI.  The caller authorises it (INSERT on the table,
 *	  and no row-level security binding the caller there); the conversion,
 *	  the check and the INSERT with the table's triggers then run as the
 *	  table's owner in a security-restricted operation with search_path
 *	  pinned, as PostgreSQL runs a table owner's code in maintenance
 *	  commands: the owner's triggers never run with the replaying role's
 *	  privileges.  While it inserts, the capture trigger (capture.c) does not
 *	  divert that row into a new message: it hands any violation back here,
 *	  and dlq_reapply_row reports it.  Rows its triggers write are captured
 *	  as usual.  The conversion and insert plans are kept in the relation's
 *	  cache entry.  dlq_edit (edit.c) checks a new payload for a captured
 *	  row here, with the same conversion (dlq_reapply_check_payload).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "capture.h"
#include "capture_int.h"
#include "dlq.h"

/*
 * Replay state: while dlq_reapply_row inserts a row, the capture trigger
 * does not divert that row into a new message; it records the violation
 * here for dlq_reapply_row to report instead, unless the row was validated
 * already.  Only the row itself: the target's (or its partition's) row
 * triggers at reapply_depth, the depth the replay's INSERT fires them at.
 */
static bool reapply_active = false;
static Oid	reapply_target = InvalidOid;
static int	reapply_depth = 0;
static Oid	reapply_validated_relid = InvalidOid;
static CaptureViolation *reapply_violation = NULL;
static MemoryContext reapply_cxt = NULL;

/*
 * How each column converts from its payload value.  When every column has
 * a scalar base type, a payload value converts through the type's input
 * function from its JSON text, which is what jsonb_populate_record does for
 * scalars; arrays and composites go through jsonb_populate_record itself.
 */
static void
reapply_prepare_converters(CaptureRel *entry, TupleDesc tupdesc)
{
	entry->fast_convert = true;
	entry->infuncs = MemoryContextAllocZero(entry->cxt, sizeof(FmgrInfo) * (tupdesc->natts + 1));
	entry->ioparams = MemoryContextAllocZero(entry->cxt, sizeof(Oid) * (tupdesc->natts + 1));
	entry->convkind = MemoryContextAllocZero(entry->cxt, tupdesc->natts + 1);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		Oid			base = getBaseType(att->atttypid);
		Oid			infunc;

		if (att->attisdropped)
			continue;
		if (type_is_array(base) || get_typtype(base) == TYPTYPE_COMPOSITE ||
			get_typtype(base) == TYPTYPE_PSEUDO)
			entry->fast_convert = false;
		entry->convkind[i] = (base == JSONOID || base == JSONBOID) ? 'j' :
			(base != att->atttypid) ? 'd' : 's';
		getTypeInputInfo(att->atttypid, &infunc, &entry->ioparams[i]);
		fmgr_info_cxt(infunc, &entry->infuncs[i], entry->cxt);
	}
}

/*
 * Prepare the per-target replay plans: the payload converted into the
 * table's row type, and the INSERT of those values.
 */
static void
reapply_prepare(CaptureRel *entry, Relation rel)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	char	   *name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												  RelationGetRelationName(rel));
	StringInfoData cols;
	StringInfoData params;
	Oid		   *types = palloc(sizeof(Oid) * (tupdesc->natts + 1));
	Oid			jtype[1] = {JSONBOID};

	initStringInfo(&cols);
	initStringInfo(&params);
	entry->insertattnums = MemoryContextAlloc(entry->cxt, sizeof(AttrNumber) * (tupdesc->natts + 1));
	entry->ninsert = 0;
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attisdropped || att->attgenerated != '\0')
			continue;
		appendStringInfo(&cols, "%s%s", entry->ninsert > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
		appendStringInfo(&params, "%s$%d", entry->ninsert > 0 ? ", " : "", entry->ninsert + 1);
		types[entry->ninsert] = att->atttypid;
		entry->insertattnums[entry->ninsert++] = att->attnum;
	}

	reapply_prepare_converters(entry, tupdesc);
	entry->convert_plan =
		dlq_prepare_kept(psprintf("SELECT * FROM pg_catalog.jsonb_populate_record(NULL::%s, $1)", name),
						 1, jtype);
	entry->insert_plan =
		dlq_prepare_kept(psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE VALUES (%s)",
								  name, cols.data, params.data),
						 entry->ninsert, types);
}

/*
 * The text a column's input function reads for a JSON value: a string is
 * its text, other values their JSON text; json and jsonb columns (json)
 * always take the JSON text.
 */
static char *
reapply_value_text(JsonbValue *v, bool json)
{
	StringInfoData buf;

	if (v->type == jbvString && !json)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	if (v->type == jbvBinary)
		return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	initStringInfo(&buf);
	escape_json(&buf, pnstrdup(v->val.string.val, v->val.string.len));
	return buf.data;
}

/*
 * Convert a payload (a JSON object keyed by column name) into slot, for a
 * table whose columns all have scalar types.  A missing key or JSON null is
 * NULL; other values go through reapply_value_text.  Errors of the input
 * functions raise.
 */
static void
reapply_convert(CaptureRel *entry, Relation rel, Jsonb *payload, TupleTableSlot *slot)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	if (!JB_ROOT_IS_OBJECT(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("captured payload is not a JSON object")));

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		const char *name = NameStr(att->attname);
		JsonbValue	vbuf;
		JsonbValue *v;

		slot->tts_isnull[i] = true;
		slot->tts_values[i] = (Datum) 0;
		if (att->attisdropped)
			continue;
		v = getKeyJsonValueFromContainer(&payload->root, name, strlen(name), &vbuf);
		if (v == NULL || v->type == jbvNull)
		{
			/* Domains may refuse NULL: ask the input function, as populate_record does. */
			if (entry->convkind[i] == 'd')
				slot->tts_values[i] = InputFunctionCall(&entry->infuncs[i], NULL,
														entry->ioparams[i], att->atttypmod);
			continue;
		}
		slot->tts_values[i] = InputFunctionCall(&entry->infuncs[i],
												reapply_value_text(v, entry->convkind[i] == 'j'),
												entry->ioparams[i], att->atttypmod);
		slot->tts_isnull[i] = false;
	}
}

/*
 * The payload as the table's row type, in a new slot; a bad value raises
 * here.  Inside SPI.
 */
static TupleTableSlot *
reapply_to_slot(CaptureRel *entry, Relation rel, Jsonb *payload)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(tupdesc, &TTSOpsVirtual);
	Datum		jvalue[1] = {JsonbPGetDatum(payload)};
	int			k = 0;

	ExecClearTuple(slot);
	if (entry->fast_convert)
	{
		reapply_convert(entry, rel, payload, slot);
		ExecStoreVirtualTuple(slot);
		return slot;
	}

	if (dlq_execute_kept(entry->convert_plan, jvalue, NULL, true, 1, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not convert the captured row");
	for (int i = 0; i < tupdesc->natts; i++)
	{
		if (TupleDescAttr(tupdesc, i)->attisdropped)
		{
			slot->tts_isnull[i] = true;
			continue;
		}
		k++;
		slot->tts_values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											k, &slot->tts_isnull[i]);
	}
	ExecStoreVirtualTuple(slot);
	return slot;
}

/* Report a violation of rel as dlq_reapply_row's failed result. */
static void
reapply_set_result(DlqReapplyResult *result, Relation rel, const CaptureViolation *v)
{
	result->ok = false;
	memcpy(result->sqlstate, unpack_sql_state(v->sqlerrcode), 5);
	result->sqlstate[5] = '\0';
	result->error = pstrdup(v->message);
	result->error_detail = dlq_violation_detail(rel, v);
}

/*
 * Open the replay target, which must be a table the current user may
 * insert into, and whose row-level security does not bind the current user.
 */
static Relation
reapply_open_target(Oid target)
{
	Relation	rel = try_relation_open(target, RowExclusiveLock);
	AclResult	aclresult;

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("replay target table with OID %u does not exist", target)));
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("replay target \"%s\" is not a table", RelationGetRelationName(rel))));

	aclresult = pg_class_aclcheck(target, GetUserId(), ACL_INSERT);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, RelationGetRelationName(rel));

	/* As the owner, the row would skip policies that bind the caller. */
	if (check_enable_rls(target, GetUserId(), true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to replay into table %s",
						RelationGetRelationName(rel)),
				 errdetail("Row-level security applies to role \"%s\" on that table, and a replay inserts as the table's owner.",
						   GetUserNameFromId(GetUserId(), false))));
	return rel;
}

/*
 * Insert the row in slot through the kept INSERT plan, inside SPI.  A row
 * may not go in: one of the table's own triggers may skip it, and a
 * partition's capture trigger skips a violating row after keeping its
 * violation, which is then returned in *violation (in callercxt).
 */
static void
reapply_insert(CaptureRel *entry, Oid target, TupleTableSlot *slot,
			   MemoryContext callercxt, CaptureViolation **violation)
{
	Datum	   *values = palloc(sizeof(Datum) * entry->ninsert);
	char	   *nulls = palloc(entry->ninsert);
	bool		save_active = reapply_active;
	Oid			save_target = reapply_target;
	int			save_depth = reapply_depth;
	Oid			save_validated = reapply_validated_relid;
	CaptureViolation *save_violation = reapply_violation;
	MemoryContext save_cxt = reapply_cxt;

	for (int k = 0; k < entry->ninsert; k++)
	{
		AttrNumber	attno = entry->insertattnums[k];

		values[k] = slot->tts_values[attno - 1];
		nulls[k] = slot->tts_isnull[attno - 1] ? 'n' : ' ';
	}

	reapply_active = true;
	reapply_target = target;
	/* The INSERT fires the row's own triggers one level down. */
	reapply_depth = DatumGetInt32(DirectFunctionCall1(pg_trigger_depth, (Datum) 0)) + 1;
	reapply_validated_relid = entry->partitioned ? InvalidOid : target;
	reapply_violation = NULL;
	reapply_cxt = callercxt;
	PG_TRY();
	{
		dlq_execute_kept(entry->insert_plan, values, nulls, false, 0, SPI_OK_INSERT);
		*violation = reapply_violation;
	}
	PG_FINALLY();
	{
		/* Back to the state of a replay this one runs inside, if any. */
		reapply_active = save_active;
		reapply_target = save_target;
		reapply_depth = save_depth;
		reapply_validated_relid = save_validated;
		reapply_violation = save_violation;
		reapply_cxt = save_cxt;
	}
	PG_END_TRY();
}

/*
 * The part of dlq_reapply_row that runs as the table's owner: convert the
 * payload, check the row, insert it.  Returns false with *v filled when the
 * check predicts a violation; otherwise *violation as reapply_insert sets
 * it.
 */
static bool
reapply_as_owner(Relation rel, Jsonb *payload, MemoryContext callercxt,
				 CaptureViolation *v, CaptureViolation **violation)
{
	CaptureRel *entry = dlq_predict_get_rel(rel);
	TupleTableSlot *slot;
	bool		ok = true;

	SPI_connect();
	if (entry->insert_plan == NULL)
		reapply_prepare(entry, rel);
	slot = reapply_to_slot(entry, rel, payload);

	/* A partitioned table is validated per partition, by its trigger. */
	if (!entry->partitioned)
	{
		MemoryContext old = MemoryContextSwitchTo(callercxt);

		ok = dlq_predict_row(entry, rel, slot, NULL, v);
		MemoryContextSwitchTo(old);
	}
	if (ok)
		reapply_insert(entry, RelationGetRelid(rel), slot, callercxt, violation);
	ExecDropSingleTupleTableSlot(slot);
	SPI_finish();
	MemoryContextSwitchTo(callercxt);
	return ok;
}

/*
 * Re-apply a captured row to target, authorised by the current user and
 * inserted as the table's owner.  See capture.h.
 */
void
dlq_reapply_row(Oid target, Jsonb *payload, const char *operation,
				DlqReapplyResult *result)
{
	MemoryContext callercxt = CurrentMemoryContext;
	Relation	rel;
	CaptureViolation v;
	CaptureViolation *violation = NULL;
	volatile bool ok = false;
	DlqCallerScope owner_scope;

	memset(result, 0, sizeof(DlqReapplyResult));

	if (operation != NULL && strcmp(operation, "INSERT") != 0)
	{
		result->ok = false;
		strcpy(result->sqlstate, "0A000");
		result->error = psprintf("replay of a captured %s is not supported", operation);
		return;
	}

	rel = reapply_open_target(target);

	/*
	 * The owner's code on the table (triggers, CHECK and domain functions)
	 * runs as the owner, in a security-restricted operation, with a search
	 * path the caller does not choose; never with the caller's privileges.
	 */
	dlq_as_relowner_begin(rel->rd_rel->relowner, &owner_scope);
	PG_TRY();
	{
		ok = reapply_as_owner(rel, payload, callercxt, &v, &violation);
	}
	PG_FINALLY();
	{
		dlq_as_relowner_end(&owner_scope);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);

	if (!ok)
		reapply_set_result(result, rel, &v);
	else if (violation != NULL)
		reapply_set_result(result, rel, violation); /* the partition's trigger found it */
	else
		result->ok = true;	/* inserted, or skipped by one of the table's own triggers */
	relation_close(rel, NoLock);
}

/* error_detail of a re-apply that raised.  See capture.h. */
Jsonb *
dlq_reapply_error_detail(const ErrorData *edata)
{
	return dlq_error_detail_json(edata->detail, edata->schema_name, edata->table_name,
								 edata->column_name, edata->constraint_name, true,
								 edata->datatype_name);
}

/*
 * Is the capture trigger firing on relid for the row dlq_reapply_row is
 * inserting?  Only for the target (or the partition the row is routed to)
 * at the trigger depth of the replay's INSERT: a row that one of its
 * triggers or rules writes, into another table or the same one, is not it.
 */
static bool
reapply_is_replayed_row(Oid relid)
{
	if (!reapply_active ||
		DatumGetInt32(DirectFunctionCall1(pg_trigger_depth, (Datum) 0)) != reapply_depth)
		return false;
	if (relid == reapply_target)
		return true;
	return get_rel_relispartition(relid) &&
		list_member_oid(get_partition_ancestors(relid), reapply_target);
}

/*
 * Is dlq_reapply_row inserting a row into relid that it validated already?
 * See capture_int.h.
 */
bool
dlq_reapply_validated(Oid relid)
{
	return reapply_active && reapply_validated_relid == relid &&
		reapply_is_replayed_row(relid);
}

/* Keep the trigger's violation for dlq_reapply_row.  See capture_int.h. */
bool
dlq_reapply_keep_violation(Oid relid, const CaptureViolation *v)
{
	MemoryContext old;

	if (!reapply_is_replayed_row(relid))
		return false;
	old = MemoryContextSwitchTo(reapply_cxt);
	reapply_violation = palloc0(sizeof(CaptureViolation));
	reapply_violation->sqlerrcode = v->sqlerrcode;
	reapply_violation->message = pstrdup(v->message);
	reapply_violation->detail = v->detail ? pstrdup(v->detail) : NULL;
	reapply_violation->column = v->column ? pstrdup(v->column) : NULL;
	reapply_violation->constraint = v->constraint ? pstrdup(v->constraint) : NULL;
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * The part of dlq_reapply_check_payload that runs as the table's owner:
 * the conversion a replay would do, whose errors (a value of the wrong
 * type, a domain's check) raise.
 */
static void
reapply_check_as_owner(Relation rel, Jsonb *payload)
{
	CaptureRel *entry = dlq_predict_get_rel(rel);
	TupleTableSlot *slot;

	SPI_connect();
	if (entry->insert_plan == NULL)
		reapply_prepare(entry, rel);
	slot = reapply_to_slot(entry, rel, payload);
	ExecDropSingleTupleTableSlot(slot);
	SPI_finish();
}

/*
 * Would payload, as the new payload of a row captured from rel, be
 * re-applied as a row of rel?  It must be a JSON object whose every key is
 * a column of rel (22023: a replay would silently drop the others), and
 * convert into rel's row type, as the table's owner in a
 * security-restricted operation like the replay itself (the input
 * functions' and domains' errors raise as they are).  See capture.h.
 */
void
dlq_reapply_check_payload(Relation rel, Jsonb *payload)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	DlqCallerScope owner_scope;
	MemoryContext callercxt = CurrentMemoryContext;

	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("payload of a row captured from table %s must be a JSON object",
						RelationGetRelationName(rel)),
				 errdetail("Its keys are the columns of the table.")));

	it = JsonbIteratorInit(&payload->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;
		AttrNumber	attnum;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		attnum = get_attnum(RelationGetRelid(rel), key);
		if (attnum == InvalidAttrNumber || attnum < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column \"%s\" of table %s does not exist", key,
							RelationGetRelationName(rel)),
					 errdetail("The payload of a captured row may only have keys that are columns of the table it was captured from.")));
	}

	dlq_as_relowner_begin(rel->rd_rel->relowner, &owner_scope);
	PG_TRY();
	{
		reapply_check_as_owner(rel, payload);
	}
	PG_FINALLY();
	{
		dlq_as_relowner_end(&owner_scope);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);
}
