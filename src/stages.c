/*-------------------------------------------------------------------------
 *
 * stages.c
 *	  Pipeline stages that etl_status watches besides the queues:
 *	  etl_register_stage (a source table and its integer key column) and
 *	  etl_watermark (how far the stage got), and reading a source's key
 *	  range for etl_status (dlq_stage_source_range).
 *
 *	  A stage's lag is the source's max key minus its watermark.  The max is
 *	  one descent of a btree index that leads with the key column, so
 *	  registering a stage requires one; the source is always read with the
 *	  caller's privileges.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "dlq.h"

static SPIPlanPtr register_plan = NULL;
static SPIPlanPtr watermark_plan = NULL;

/* May the current user read this column (table or column privilege)? */
static bool
stages_can_select_column(Oid relid, AttrNumber attnum)
{
	return pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck(relid, attnum, GetUserId(), ACL_SELECT) == ACLCHECK_OK;
}

/*
 * The source's max (and min, when the watermark is unset) key, for
 * etl_status (status.c); inside SPI.  The caller must be allowed to read the
 * key column; the query itself runs as the source's owner, in a
 * security-restricted operation, so that code the owner wrote (row-level
 * security policies) never runs with the privileges of whoever polls
 * etl_status.  Returns false, with a reason, when the source or its key
 * column is gone.
 */
bool
dlq_stage_source_range(Oid relid, const char *column, bool want_min,
					   bool *has_min, int64 *min, bool *has_max, int64 *max,
					   char **problem)
{
	char	   *relname = get_rel_name(relid);
	AttrNumber	attnum;
	char	   *sql;
	Datum		value;
	bool		isnull;
	DlqCallerScope owner_scope;

	if (relname == NULL)
	{
		*problem = psprintf("source relation %u no longer exists", relid);
		return false;
	}
	attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber)
	{
		*problem = psprintf("key column \"%s\" of %s no longer exists", column, relname);
		return false;
	}
	if (!stages_can_select_column(relid, attnum))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read the key column \"%s\" of %s", column, relname),
				 errhint("etl_status reads the max key of each registered stage's source only for roles that may; grant SELECT on it.")));

	sql = psprintf("SELECT %s pg_catalog.max(%s)::pg_catalog.int8 FROM %s",
				   want_min ? psprintf("pg_catalog.min(%s)::pg_catalog.int8,", quote_identifier(column)) : "",
				   quote_identifier(column),
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), relname));
	dlq_as_relowner_begin(dlq_rel_owner(relid), &owner_scope);
	PG_TRY();
	{
		if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not read the max key of %s", relname);
	}
	PG_FINALLY();
	{
		dlq_as_relowner_end(&owner_scope);
	}
	PG_END_TRY();
	*has_min = false;
	if (want_min)
	{
		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		*has_min = !isnull;
		if (*has_min)
			*min = DatumGetInt64(value);
	}
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, want_min ? 2 : 1,
						  &isnull);
	*has_max = !isnull;
	if (*has_max)
		*max = DatumGetInt64(value);
	return true;
}

static Oid
stages_index_relam(Oid indexoid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(indexoid));
	Oid			relam;

	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	relam = ((Form_pg_class) GETSTRUCT(tup))->relam;
	ReleaseSysCache(tup);
	return relam;
}

/*
 * Does relation rel have a valid, non-partial btree index whose leading
 * column is attnum with the type's default operator family, so that
 * max(column) is one index descent?
 */
static bool
stages_has_btree_index(Relation rel, AttrNumber attnum, Oid atttype)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			opclass = GetDefaultOpClass(atttype, BTREE_AM_OID);
	Oid			opfamily = OidIsValid(opclass) ? get_opclass_family(opclass) : InvalidOid;
	bool		found = false;

	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index index;
		bool		isnull;
		Datum		classes;
		oidvector  *indclass;

		if (!HeapTupleIsValid(tup))
			continue;
		index = (Form_pg_index) GETSTRUCT(tup);
		classes = SysCacheGetAttr(INDEXRELID, tup, Anum_pg_index_indclass, &isnull);
		indclass = (oidvector *) DatumGetPointer(classes);
		if (index->indisvalid && index->indnkeyatts > 0 &&
			index->indkey.values[0] == attnum &&
			heap_attisnull(tup, Anum_pg_index_indpred, NULL) &&
			stages_index_relam(indexoid) == BTREE_AM_OID &&
			get_opclass_family(indclass->values[0]) == opfamily)
			found = true;
		ReleaseSysCache(tup);
		if (found)
			break;
	}
	list_free(indexes);
	return found;
}

/*
 * Check a stage's source as the caller: a table, partitioned table or
 * materialized view whose integer key column the caller may read and that
 * has a usable btree index.  The source stays locked until commit.
 */
static void
stages_check_source(Oid relid, const char *column)
{
	Relation	rel;
	AttrNumber	attnum;
	Oid			atttype;
	char		relkind;

	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	relkind = rel->rd_rel->relkind;
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE &&
		relkind != RELKIND_MATVIEW)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table or materialized view",
						RelationGetRelationName(rel))));
	attnum = get_attnum(relid, column);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						column, RelationGetRelationName(rel))));
	atttype = get_atttype(relid, attnum);
	if (atttype != INT2OID && atttype != INT4OID && atttype != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("key column \"%s\" must be of type smallint, integer or bigint",
						column),
				 errdetail("It is of type %s.", format_type_be(atttype))));
	if (!stages_can_select_column(relid, attnum))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for column \"%s\" of relation \"%s\"",
						column, RelationGetRelationName(rel))));
	if (!stages_has_btree_index(rel, attnum, atttype))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("key column \"%s\" of relation \"%s\" has no usable btree index",
						column, RelationGetRelationName(rel)),
				 errdetail("etl_status reads the source's max key from a valid, non-partial btree index that leads with the key column."),
				 errhint("CREATE INDEX ON %s (%s);",
						 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													RelationGetRelationName(rel)),
						 quote_identifier(column))));
	/* Keep the lock: the source cannot be dropped before we commit. */
	relation_close(rel, NoLock);
}

PG_FUNCTION_INFO_V1(dlq_etl_register_stage);

/*
 * etl_register_stage(stage text, source regclass, key_column name)
 *
 * The source is checked with the caller's privileges: it must be a table,
 * partitioned table or materialized view whose integer key column the
 * caller may read and that has a usable btree index.  Registering an
 * existing stage again replaces its source and resets its watermark.
 */
Datum
dlq_etl_register_stage(PG_FUNCTION_ARGS)
{
	char	   *stage = dlq_check_name("stage name",
									   PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	Oid			relid;
	char	   *column;
	DlqOwnerContext owner;
	Datum		values[3];
	StringInfoData detail;

	dlq_check_not_null(fcinfo, 1, "source");
	dlq_check_not_null(fcinfo, 2, "key_column");
	relid = PG_GETARG_OID(1);
	column = NameStr(*PG_GETARG_NAME(2));

	stages_check_source(relid, column);

	dlq_become_owner(&owner);
	SPI_connect();
	if (register_plan == NULL)
	{
		Oid			types[3] = {TEXTOID, OIDOID, TEXTOID};

		register_plan = dlq_prepare_kept(
									   "INSERT INTO dlq.stages (stage, source, key_column) VALUES ($1, $2::regclass, $3::name)"
									   " ON CONFLICT (stage) DO UPDATE SET source = excluded.source,"
									   "  key_column = excluded.key_column, watermark = NULL, watermark_at = NULL,"
									   "  registered_at = now()",
									   3, types);
	}
	values[0] = CStringGetTextDatum(stage);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = CStringGetTextDatum(column);
	dlq_execute_kept(register_plan, values, NULL, false, 0, SPI_OK_INSERT);

	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"stage\":");
	escape_json(&detail, stage);
	appendStringInfoString(&detail, ",\"source\":");
	escape_json(&detail, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													get_rel_name(relid)));
	appendStringInfoString(&detail, ",\"key_column\":");
	escape_json(&detail, column);
	appendStringInfoChar(&detail, '}');
	dlq_audit("configured", GetUserNameFromId(owner.caller, false), NULL, (Datum) 0, false,
			  0, NULL, 0,
			  dlq_jsonb(detail.data));
	SPI_finish();
	dlq_restore_caller(&owner);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(dlq_etl_watermark);

/*
 * etl_watermark(stage text, position bigint) returns bigint
 *
 * Advances the watermark to position and returns the watermark in force.
 * It never moves backwards: a lower position (a late or duplicate report
 * from a concurrent stage worker) leaves it as it is.  To start over,
 * register the stage again.
 */
Datum
dlq_etl_watermark(PG_FUNCTION_ARGS)
{
	char	   *stage = dlq_check_name("stage name",
									   PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	DlqOwnerContext owner;
	Datum		values[2];
	int64		result;
	bool		isnull;

	dlq_check_not_null(fcinfo, 1, "position");

	dlq_become_owner(&owner);
	SPI_connect();
	if (watermark_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, INT8OID};

		watermark_plan = dlq_prepare_kept(
										"UPDATE dlq.stages s SET"
										" watermark = GREATEST(s.watermark, $2),"
										" watermark_at = CASE WHEN s.watermark IS NULL OR $2 > s.watermark"
										"  THEN clock_timestamp() ELSE s.watermark_at END"
										" WHERE s.stage = $1 RETURNING s.watermark",
										2, types);
	}
	values[0] = CStringGetTextDatum(stage);
	values[1] = PG_GETARG_DATUM(1);
	dlq_execute_kept(watermark_plan, values, NULL, false, 0, SPI_OK_UPDATE_RETURNING);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stage \"%s\" does not exist", stage),
				 errhint("Register it with etl_register_stage().")));
	result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	dlq_restore_caller(&owner);
	PG_RETURN_INT64(result);
}

/* ------------------------------------------------------------------------
 * Entry points under their 1.0 names
 * ------------------------------------------------------------------------
 */

/*
 * The 1.0 name of the entry point: a database not yet updated to 1.1 (ALTER
 * EXTENSION dlq UPDATE) still calls etl_register_stage() by this symbol, and a new
 * library must serve it.
 */
PG_FUNCTION_INFO_V1(etl_register_stage);

Datum
etl_register_stage(PG_FUNCTION_ARGS)
{
	return dlq_etl_register_stage(fcinfo);
}

/*
 * The 1.0 name of the entry point: a database not yet updated to 1.1 (ALTER
 * EXTENSION dlq UPDATE) still calls etl_watermark() by this symbol, and a new
 * library must serve it.
 */
PG_FUNCTION_INFO_V1(etl_watermark);

Datum
etl_watermark(PG_FUNCTION_ARGS)
{
	return dlq_etl_watermark(fcinfo);
}
