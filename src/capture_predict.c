/*-------------------------------------------------------------------------
 *
 * capture_predict.c
 *	  Predicting whether a row would violate a constraint of its table,
 *	  without a subtransaction, the same way the executor would check it;
 *	  and the per-relation cache of constraints and foreign keys that the
 *	  prediction reads.
 *
 *	  - NOT NULL and CHECK: the relation's own constraints, evaluated like
 *		ExecConstraints / ExecRelCheck (CHECK constraints in name order);
 *	  - UNIQUE: each immediate unique index is probed with a dirty snapshot
 *		through ExecCheckIndexConstraints, which sees rows inserted earlier
 *		in the same statement or transaction and waits for a concurrent
 *		inserter of the same key to finish; on UPDATE the row being updated
 *		is not a conflict;
 *	  - FOREIGN KEY: a probe of the parent's unique index with a dirty
 *		snapshot (or, for a partitioned parent, a prepared query run as its
 *		owner like the RI triggers), with MATCH SIMPLE / FULL null rules;
 *		skipped on UPDATE when the key did not change.
 *
 *	  A predicted violation carries the SQLSTATE, message and detail that
 *	  PostgreSQL itself would have raised, and this file turns it into the
 *	  error_detail a message records.  Per relation, the constraint metadata
 *	  is cached in a hash invalidated by relcache callbacks; the executor
 *	  state (prepared expressions, index infos) lives for one transaction.
 *	  The dlq_capture trigger (capture.c) and dlq_reapply_row (reapply.c)
 *	  both predict through here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_operator.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"

#include "capture_int.h"
#include "dlq.h"

/* Longest value shown in a "Failing row contains" detail, as execMain.c. */
#define PREDICT_MAX_FIELD_LEN 64

/* One foreign key of a relation, with its prepared probe. */
struct CaptureFk
{
	char	   *conname;
	Oid			pkrelid;
	char	   *pkrelname;
	Oid			pkowner;
	char		matchtype;
	int			nkeys;
	AttrNumber	fkattnums[INDEX_MAX_KEYS];
	SPIPlanPtr	plan;			/* kept; the probe when there is no index probe */

	/*
	 * Index probe of the referenced key, when the parent is a plain table
	 * whose unique index has an equality operator for the foreign key's types:
	 * index column i is compared with foreign key column idxkey[i].
	 */
	Oid			pkindex;		/* or InvalidOid: use plan */
	int			idxkey[INDEX_MAX_KEYS];
	Oid			idxproc[INDEX_MAX_KEYS];
	Oid			idxsubtype[INDEX_MAX_KEYS];
};

/* The cache: one CaptureRel per relation OID, for the backend's life. */
static HTAB *predict_rels = NULL;

/*
 * A relation changed: its entry, and those with a foreign key referencing
 * it, are read again on next use (all of them when relid is invalid).
 */
static void
predict_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CaptureRel *entry;

	if (predict_rels == NULL)
		return;
	hash_seq_init(&status, predict_rels);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->relid == relid)
			entry->valid = false;
		else
		{
			for (int i = 0; i < entry->nfk; i++)
				if (entry->fks[i].pkrelid == relid)
					entry->valid = false;
		}
	}
}

/* Free an entry's metadata; the per-transaction state dies on its own. */
static void
predict_free_entry(CaptureRel *entry)
{
	for (int i = 0; i < entry->nfk; i++)
		if (entry->fks[i].plan)
			SPI_freeplan(entry->fks[i].plan);
	if (entry->convert_plan)
		SPI_freeplan(entry->convert_plan);
	if (entry->insert_plan)
		SPI_freeplan(entry->insert_plan);
	if (entry->cxt)
		MemoryContextDelete(entry->cxt);
}

/*
 * A foreign key to a partitioned table has one pg_constraint row per
 * referenced partition too, for the actions on that side; its parent
 * constraint belongs to the same referencing table.  Only the top one is
 * checked, against the whole partitioned table.  (A foreign key cloned onto
 * a partition of the referencing table has a parent on another table, and
 * is checked.)
 */
static bool
predict_fk_is_pk_clone(Form_pg_constraint con)
{
	HeapTuple	tup;
	bool		clone;

	if (!OidIsValid(con->conparentid))
		return false;
	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(con->conparentid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", con->conparentid);
	clone = ((Form_pg_constraint) GETSTRUCT(tup))->conrelid == con->conrelid;
	ReleaseSysCache(tup);
	return clone;
}

/*
 * Set up the index probe of a foreign key's parent: its unique index
 * (conindid), with the operator of each index column's family that compares
 * the index type with the foreign key column's type.  Leaves pkindex invalid
 * when some column has none; the SQL probe is used then.
 */
static void
predict_fk_index(CaptureFk *cfk, ForeignKeyCacheInfo *fk, Oid indexoid, TupleDesc tupdesc)
{
	Relation	index = index_open(indexoid, AccessShareLock);
	int			nkeyatts = IndexRelationGetNumberOfKeyAttributes(index);
	bool		ok = index->rd_rel->relam == BTREE_AM_OID && nkeyatts == fk->nkeys;

	for (int i = 0; ok && i < nkeyatts; i++)
	{
		int			k;
		Oid			fktype;
		Oid			opr;

		for (k = 0; k < fk->nkeys; k++)
			if (fk->confkey[k] == index->rd_index->indkey.values[i])
				break;
		if (k == fk->nkeys)
		{
			ok = false;
			break;
		}
		fktype = getBaseType(TupleDescAttr(tupdesc, fk->conkey[k] - 1)->atttypid);
		opr = get_opfamily_member(index->rd_opfamily[i], index->rd_opcintype[i],
								  fktype, BTEqualStrategyNumber);
		if (!OidIsValid(opr))
		{
			ok = false;
			break;
		}
		cfk->idxkey[i] = k;
		cfk->idxproc[i] = get_opcode(opr);
		cfk->idxsubtype[i] = fktype;
	}
	cfk->pkindex = ok ? indexoid : InvalidOid;
	index_close(index, AccessShareLock);
}

/*
 * Is the parent row there?  Probes the parent's unique index with a dirty
 * snapshot, like the unique check: committed rows and this transaction's
 * rows count, a row inserted by a transaction still in progress is waited
 * for.  Run without privilege checks, like the RI triggers' own query.
 */
static bool
predict_fk_probe_index(CaptureFk *fk, Datum *values)
{
	Relation	pkrel = table_open(fk->pkrelid, AccessShareLock);
	Relation	index = index_open(fk->pkindex, AccessShareLock);
	int			nkeyatts = IndexRelationGetNumberOfKeyAttributes(index);
	TupleTableSlot *slot = table_slot_create(pkrel, NULL);
	ScanKeyData keys[INDEX_MAX_KEYS];
	SnapshotData dirty;
	IndexScanDesc scan;
	bool		found;

	for (int i = 0; i < nkeyatts; i++)
		ScanKeyEntryInitialize(&keys[i], 0, i + 1, BTEqualStrategyNumber,
							   fk->idxsubtype[i], index->rd_indcollation[i],
							   fk->idxproc[i], values[fk->idxkey[i]]);
	InitDirtySnapshot(dirty);
retry:
	found = false;
	scan = index_beginscan(pkrel, index, &dirty, nkeyatts, 0);
	index_rescan(scan, keys, nkeyatts, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (TransactionIdIsValid(dirty.xmin))
		{
			TransactionId xwait = dirty.xmin;

			index_endscan(scan);
			XactLockTableWait(xwait, pkrel, &slot->tts_tid, XLTW_None);
			goto retry;
		}
		found = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(pkrel, NoLock);
	return found;
}

/* NOT NULL columns, generated columns excepted (computed after us). */
static void
predict_read_notnull(CaptureRel *entry, TupleDesc tupdesc)
{
	entry->notnull = palloc(sizeof(AttrNumber) * tupdesc->natts);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attnotnull && !att->attisdropped && att->attgenerated == '\0')
			entry->notnull[entry->nnotnull++] = att->attnum;
	}
}

/* Does expr read a generated column? */
static bool
predict_reads_generated(Expr *expr, TupleDesc tupdesc)
{
	Bitmapset  *attrs = NULL;
	int			k = -1;

	pull_varattnos((Node *) expr, 1, &attrs);
	while ((k = bms_next_member(attrs, k)) >= 0)
	{
		AttrNumber	attno = k + FirstLowInvalidHeapAttributeNumber;

		if (attno > 0 && TupleDescAttr(tupdesc, attno - 1)->attgenerated != '\0')
			return true;
	}
	return false;
}

/*
 * CHECK constraints, already in name order in the relcache; those reading
 * a generated column are left to the executor (it is computed after us).
 */
static void
predict_read_checks(CaptureRel *entry, TupleDesc tupdesc)
{
	TupleConstr *constr = tupdesc->constr;

	if (constr == NULL || constr->num_check == 0)
		return;
	entry->checkname = palloc(sizeof(char *) * constr->num_check);
	entry->checkexpr = palloc(sizeof(Expr *) * constr->num_check);
	for (int i = 0; i < constr->num_check; i++)
	{
		Expr	   *expr = stringToNode(constr->check[i].ccbin);

		if (constr->has_generated_stored && predict_reads_generated(expr, tupdesc))
			continue;
		entry->checkname[entry->ncheck] = pstrdup(constr->check[i].ccname);
		entry->checkexpr[entry->ncheck] = expression_planner(expr);
		entry->ncheck++;
	}
}

/* Immediate unique indexes that take inserts; exclusion ones are not ours. */
static void
predict_read_unique(CaptureRel *entry, Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;

	entry->uniqueoids = palloc(sizeof(Oid) * (list_length(indexes) + 1));
	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index index;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", indexoid);
		index = (Form_pg_index) GETSTRUCT(tup);
		if (index->indisunique && index->indimmediate && index->indisready &&
			!index->indisexclusion)
			entry->uniqueoids[entry->nunique++] = indexoid;
		ReleaseSysCache(tup);
	}
}

/*
 * The SQL probe of a foreign key's parent, for a parent the index probe
 * cannot serve (a partitioned table, say): planned now in SPI's context and
 * kept.
 */
static void
predict_fk_plan(CaptureFk *cfk, ForeignKeyCacheInfo *fk, TupleDesc tupdesc)
{
	StringInfoData sql;
	Oid			types[INDEX_MAX_KEYS];
	char		pkkind = get_rel_relkind(fk->confrelid);

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT 1 FROM %s%s.%s x WHERE ",
					 pkkind == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
					 quote_identifier(get_namespace_name(get_rel_namespace(fk->confrelid))),
					 quote_identifier(cfk->pkrelname));
	for (int k = 0; k < fk->nkeys; k++)
	{
		HeapTuple	optup = SearchSysCache1(OPEROID,
											ObjectIdGetDatum(fk->conpfeqop[k]));
		Form_pg_operator op;

		if (!HeapTupleIsValid(optup))
			elog(ERROR, "cache lookup failed for operator %u", fk->conpfeqop[k]);
		op = (Form_pg_operator) GETSTRUCT(optup);
		appendStringInfo(&sql, "%sx.%s OPERATOR(%s.%s) $%d",
						 k > 0 ? " AND " : "",
						 quote_identifier(get_attname(fk->confrelid, fk->confkey[k], false)),
						 quote_identifier(get_namespace_name(op->oprnamespace)),
						 NameStr(op->oprname), k + 1);
		ReleaseSysCache(optup);
		types[k] = TupleDescAttr(tupdesc, fk->conkey[k] - 1)->atttypid;
	}
	SPI_connect();
	cfk->plan = dlq_prepare_kept(sql.data, fk->nkeys, types);
	SPI_finish();
}

/*
 * Add fk to entry->fks with its probe, unless it is checked only at commit
 * (INITIALLY DEFERRED) or is the referenced side's copy of a foreign key to
 * a partitioned table.
 */
static void
predict_read_fk(CaptureRel *entry, ForeignKeyCacheInfo *fk, TupleDesc tupdesc)
{
	HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(fk->conoid));
	Form_pg_constraint con;
	CaptureFk  *cfk;
	Oid			pkindex;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", fk->conoid);
	con = (Form_pg_constraint) GETSTRUCT(tup);
	if (con->condeferred || predict_fk_is_pk_clone(con))
	{
		ReleaseSysCache(tup);
		return;
	}
	cfk = &entry->fks[entry->nfk++];
	cfk->conname = pstrdup(NameStr(con->conname));
	cfk->matchtype = con->confmatchtype;
	cfk->pkrelid = fk->confrelid;
	cfk->pkrelname = pstrdup(get_rel_name(fk->confrelid));
	cfk->nkeys = fk->nkeys;
	memcpy(cfk->fkattnums, fk->conkey, sizeof(AttrNumber) * fk->nkeys);
	pkindex = con->conindid;
	ReleaseSysCache(tup);

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(fk->confrelid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", fk->confrelid);
	cfk->pkowner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	if (get_rel_relkind(fk->confrelid) == RELKIND_RELATION)
		predict_fk_index(cfk, fk, pkindex, tupdesc);
	if (!OidIsValid(cfk->pkindex))
		predict_fk_plan(cfk, fk, tupdesc);
}

/* Read the constraints of rel into a fresh entry. */
static void
predict_build_entry(CaptureRel *entry, Relation rel)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	MemoryContext old;
	List	   *fkeys;
	ListCell   *lc;
	Oid			relid = entry->relid;

	memset(entry, 0, sizeof(CaptureRel));
	entry->relid = relid;
	/* An invalidation that arrives while we read the catalogs clears this. */
	entry->valid = true;
	entry->cxt = AllocSetContextCreate(CacheMemoryContext, "dlq capture relation",
									   ALLOCSET_SMALL_SIZES);
	MemoryContextCopyAndSetIdentifier(entry->cxt, RelationGetRelationName(rel));
	old = MemoryContextSwitchTo(entry->cxt);

	predict_read_notnull(entry, tupdesc);
	predict_read_checks(entry, tupdesc);
	predict_read_unique(entry, rel);

	/* Foreign keys that are checked at once (not INITIALLY DEFERRED). */
	fkeys = RelationGetFKeyList(rel);
	entry->fks = palloc0(sizeof(CaptureFk) * (list_length(fkeys) + 1));
	foreach(lc, fkeys)
		predict_read_fk(entry, lfirst(lc), tupdesc);

	entry->partitioned = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;

	MemoryContextSwitchTo(old);
	entry->lxid = InvalidLocalTransactionId;
}

/*
 * Executor state of entry for the current transaction, in a child of
 * TopTransactionContext; the previous transaction's went with its memory.
 */
static void
predict_begin_xact(CaptureRel *entry)
{
	MemoryContext old;

	entry->estate = NULL;
	old = MemoryContextSwitchTo(TopTransactionContext);
	entry->estate = CreateExecutorState();
	MemoryContextSwitchTo(entry->estate->es_query_cxt);
	entry->checkstate = palloc(sizeof(ExprState *) * (entry->ncheck + 1));
	for (int i = 0; i < entry->ncheck; i++)
		entry->checkstate[i] = ExecInitExpr(copyObject(entry->checkexpr[i]), NULL);
	entry->uniqueinfo = palloc(sizeof(IndexInfo *) * (entry->nunique + 1));
	for (int i = 0; i < entry->nunique; i++)
	{
		Relation	index = index_open(entry->uniqueoids[i], RowExclusiveLock);

		entry->uniqueinfo[i] = BuildIndexInfo(index);
		BuildSpeculativeIndexInfo(index, entry->uniqueinfo[i]);
		index_close(index, NoLock);
	}
	MemoryContextSwitchTo(old);
	entry->lxid = DLQ_LXID;
}

/*
 * The cache entry of rel, with executor state for the current transaction.
 */
CaptureRel *
dlq_predict_get_rel(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	CaptureRel *entry;
	bool		found;

	if (predict_rels == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureRel);
		predict_rels = hash_create("dlq capture relations", 16, &ctl,
								   HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(predict_relcache_callback, (Datum) 0);
	}

	entry = hash_search(predict_rels, &relid, HASH_ENTER, &found);
	if (!found)
	{
		entry->cxt = NULL;
		entry->nfk = 0;
		entry->convert_plan = entry->insert_plan = NULL;
		entry->valid = false;
	}
	if (!entry->valid)
	{
		if (found)
			predict_free_entry(entry);
		entry->nfk = 0;
		entry->cxt = NULL;
		entry->convert_plan = entry->insert_plan = NULL;
		PG_TRY();
		{
			predict_build_entry(entry, rel);
		}
		PG_CATCH();
		{
			hash_search(predict_rels, &relid, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}

	if (entry->lxid != DLQ_LXID)
		predict_begin_xact(entry);
	return entry;
}

/* Append the value of column i of slot, cut as execMain.c cuts it. */
static void
predict_append_value(StringInfo buf, Form_pg_attribute att, TupleTableSlot *slot, int i)
{
	char	   *val;
	int			vallen;

	if (slot->tts_isnull[i])
		val = "null";
	else
	{
		Oid			foutoid;
		bool		typisvarlena;

		getTypeOutputInfo(att->atttypid, &foutoid, &typisvarlena);
		val = OidOutputFunctionCall(foutoid, slot->tts_values[i]);
	}
	vallen = strlen(val);
	if (vallen <= PREDICT_MAX_FIELD_LEN)
		appendBinaryStringInfo(buf, val, vallen);
	else
	{
		vallen = pg_mbcliplen(val, vallen, PREDICT_MAX_FIELD_LEN);
		appendBinaryStringInfo(buf, val, vallen);
		appendStringInfoString(buf, "...");
	}
}

/*
 * The "(v1, v2, ...)" description of a row, as ExecBuildSlotValueDescription
 * builds it for "Failing row contains": NULL when the user may see nothing.
 */
static char *
predict_row_description(Relation rel, TupleTableSlot *slot)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StringInfoData buf;
	StringInfoData collist;
	bool		table_perm;
	bool		any_perm = false;
	bool		write_comma = false;
	bool		write_comma_collist = false;

	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		return NULL;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	table_perm = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK;
	if (table_perm)
		any_perm = true;
	else
	{
		initStringInfo(&collist);
		appendStringInfoChar(&collist, '(');
	}

	slot_getallattrs(slot);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		bool		column_perm = false;

		if (att->attisdropped)
			continue;
		if (!table_perm)
		{
			/* The user supplied the whole row, so every column counts as modified. */
			column_perm = any_perm = true;
			if (write_comma_collist)
				appendStringInfoString(&collist, ", ");
			else
				write_comma_collist = true;
			appendStringInfoString(&collist, NameStr(att->attname));
		}
		if (table_perm || column_perm)
		{
			if (write_comma)
				appendStringInfoString(&buf, ", ");
			else
				write_comma = true;
			predict_append_value(&buf, att, slot, i);
		}
	}
	if (!any_perm)
		return NULL;
	appendStringInfoChar(&buf, ')');
	if (!table_perm)
	{
		appendStringInfoString(&collist, ") = ");
		appendBinaryStringInfo(&collist, buf.data, buf.len);
		return collist.data;
	}
	return buf.data;
}

/* The "Failing row contains" detail of a row, or NULL. */
static char *
predict_failing_row(Relation rel, TupleTableSlot *slot)
{
	char	   *row = predict_row_description(rel, slot);

	return row ? psprintf("Failing row contains %s.", row) : NULL;
}

/*
 * The foreign key's columns of slot, into values and nulls; returns how
 * many are NULL.  *changed is false for an UPDATE (oldslot) that keeps the
 * key.
 */
static int
predict_fk_key(Relation rel, CaptureFk *fk, TupleTableSlot *slot,
			   TupleTableSlot *oldslot, Datum *values, char *nulls, bool *changed)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	int			nnull = 0;

	*changed = (oldslot == NULL);
	for (int k = 0; k < fk->nkeys; k++)
	{
		AttrNumber	attno = fk->fkattnums[k];
		bool		isnull;

		values[k] = slot_getattr(slot, attno, &isnull);
		nulls[k] = isnull ? 'n' : ' ';
		if (isnull)
			nnull++;
		if (!*changed)
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, attno - 1);
			bool		oldnull;
			Datum		old = slot_getattr(oldslot, attno, &oldnull);

			if (isnull != oldnull ||
				(!isnull && !datumIsEqual(old, values[k], att->attbyval, att->attlen)))
				*changed = true;
		}
	}
	return nnull;
}

/* Is the parent row of a key without NULLs there? */
static bool
predict_fk_parent_found(CaptureFk *fk, Datum *values, char *nulls)
{
	Oid			save_user;
	int			save_sec;
	bool		found;

	if (OidIsValid(fk->pkindex))
		return predict_fk_probe_index(fk, values);

	/* Probe the parent as its owner, like ri_PerformCheck. */
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(fk->pkowner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	SPI_connect();
	dlq_execute_kept(fk->plan, values, nulls, false, 1, SPI_OK_SELECT);
	found = SPI_processed > 0;
	SPI_finish();
	SetUserIdAndSecContext(save_user, save_sec);
	return found;
}

/* *v for a key whose parent row is missing, as ri_ReportViolation words it. */
static void
predict_fk_missing(Relation rel, CaptureFk *fk, Datum *values, CaptureViolation *v)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	v->sqlerrcode = ERRCODE_FOREIGN_KEY_VIOLATION;
	v->message = psprintf("insert or update on table \"%s\" violates foreign key constraint \"%s\"",
						  RelationGetRelationName(rel), fk->conname);
	v->constraint = fk->conname;
	if (pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_SELECT) == ACLCHECK_OK)
	{
		StringInfoData names;
		StringInfoData vals;

		initStringInfo(&names);
		initStringInfo(&vals);
		for (int k = 0; k < fk->nkeys; k++)
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, fk->fkattnums[k] - 1);
			Oid			foutoid;
			bool		typisvarlena;

			getTypeOutputInfo(att->atttypid, &foutoid, &typisvarlena);
			appendStringInfo(&names, "%s%s", k > 0 ? ", " : "", NameStr(att->attname));
			appendStringInfo(&vals, "%s%s", k > 0 ? ", " : "",
							 OidOutputFunctionCall(foutoid, values[k]));
		}
		v->detail = psprintf("Key (%s)=(%s) is not present in table \"%s\".",
							 names.data, vals.data, fk->pkrelname);
	}
	else
		v->detail = psprintf("Key is not present in table \"%s\".", fk->pkrelname);
}

/* Does the foreign key find its parent row?  Sets *v when it does not. */
static bool
predict_check_fk(Relation rel, CaptureFk *fk, TupleTableSlot *slot,
				 TupleTableSlot *oldslot, CaptureViolation *v)
{
	Datum		values[INDEX_MAX_KEYS];
	char		nulls[INDEX_MAX_KEYS];
	bool		changed;
	int			nnull;

	nnull = predict_fk_key(rel, fk, slot, oldslot, values, nulls, &changed);

	/* An UPDATE that keeps the key needs no check, as in the RI triggers. */
	if (!changed)
		return true;
	if (nnull == fk->nkeys)
		return true;
	if (nnull > 0)
	{
		if (fk->matchtype != FKCONSTR_MATCH_FULL)
			return true;		/* MATCH SIMPLE: any NULL column passes */
		v->sqlerrcode = ERRCODE_FOREIGN_KEY_VIOLATION;
		v->message = psprintf("insert or update on table \"%s\" violates foreign key constraint \"%s\"",
							  RelationGetRelationName(rel), fk->conname);
		v->detail = pstrdup("MATCH FULL does not allow mixing of null and nonnull key values.");
		v->constraint = fk->conname;
		return false;
	}

	if (predict_fk_parent_found(fk, values, nulls))
		return true;
	predict_fk_missing(rel, fk, values, v);
	return false;
}

/* Are the NOT NULL columns of slot set?  Sets *v when one is not. */
static bool
predict_check_notnull(CaptureRel *entry, Relation rel, TupleTableSlot *slot,
					  CaptureViolation *v)
{
	for (int i = 0; i < entry->nnotnull; i++)
	{
		AttrNumber	attno = entry->notnull[i];

		if (slot->tts_isnull[attno - 1])
		{
			char	   *attname = NameStr(TupleDescAttr(RelationGetDescr(rel), attno - 1)->attname);

			v->sqlerrcode = ERRCODE_NOT_NULL_VIOLATION;
			v->message = psprintf("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
								  attname, RelationGetRelationName(rel));
			v->detail = predict_failing_row(rel, slot);
			v->column = pstrdup(attname);
			return false;
		}
	}
	return true;
}

/* Does slot pass the CHECK constraints, in name order?  Sets *v if not. */
static bool
predict_check_checks(CaptureRel *entry, Relation rel, TupleTableSlot *slot,
					 CaptureViolation *v)
{
	ExprContext *econtext = GetPerTupleExprContext(entry->estate);

	econtext->ecxt_scantuple = slot;
	for (int i = 0; i < entry->ncheck; i++)
	{
		if (!ExecCheck(entry->checkstate[i], econtext))
		{
			v->sqlerrcode = ERRCODE_CHECK_VIOLATION;
			v->message = psprintf("new row for relation \"%s\" violates check constraint \"%s\"",
								  RelationGetRelationName(rel), entry->checkname[i]);
			v->detail = predict_failing_row(rel, slot);
			v->constraint = pstrdup(entry->checkname[i]);
			ResetPerTupleExprContext(entry->estate);
			return false;
		}
	}
	return true;
}

/*
 * Is the key of slot free in every unique index?  Sets *v when it is not.
 * On UPDATE (oldslot) the row being updated holds the key already.
 */
static bool
predict_check_unique(CaptureRel *entry, Relation rel, TupleTableSlot *slot,
					 TupleTableSlot *oldslot, CaptureViolation *v)
{
	ExprContext *econtext = GetPerTupleExprContext(entry->estate);

	for (int i = 0; i < entry->nunique; i++)
	{
		ResultRelInfo rri;
		Relation	index = index_open(entry->uniqueoids[i], RowExclusiveLock);
		ItemPointerData conflict;
		bool		ok;

		memset(&rri, 0, sizeof(rri));
		rri.type = T_ResultRelInfo;
		rri.ri_RelationDesc = rel;
		rri.ri_NumIndices = 1;
		rri.ri_IndexRelationDescs = &index;
		rri.ri_IndexRelationInfo = &entry->uniqueinfo[i];
		ok = ExecCheckIndexConstraints(&rri, slot, entry->estate, &conflict, NIL);
		if (!ok && oldslot != NULL && ItemPointerEquals(&conflict, &oldslot->tts_tid))
			ok = true;
		if (!ok)
		{
			Datum		values[INDEX_MAX_KEYS];
			bool		isnull[INDEX_MAX_KEYS];
			char	   *key;

			econtext->ecxt_scantuple = slot;
			FormIndexDatum(entry->uniqueinfo[i], slot, entry->estate, values, isnull);
			key = BuildIndexValueDescription(index, values, isnull);
			v->sqlerrcode = ERRCODE_UNIQUE_VIOLATION;
			v->message = psprintf("duplicate key value violates unique constraint \"%s\"",
								  RelationGetRelationName(index));
			v->detail = key ? psprintf("Key %s already exists.", key) : NULL;
			v->constraint = pstrdup(RelationGetRelationName(index));
		}
		index_close(index, NoLock);
		ResetPerTupleExprContext(entry->estate);
		if (!ok)
			return false;
	}
	ResetPerTupleExprContext(entry->estate);
	return true;
}

/*
 * Would the row in slot violate a constraint of rel?  Returns false and
 * fills *v with the error PostgreSQL would raise when it would.  oldslot is
 * the row being updated (NULL for an INSERT).  The constraints are checked
 * in the executor's order: NOT NULL, CHECK, UNIQUE, FOREIGN KEY.
 */
bool
dlq_predict_row(CaptureRel *entry, Relation rel, TupleTableSlot *slot,
				TupleTableSlot *oldslot, CaptureViolation *v)
{
	memset(v, 0, sizeof(CaptureViolation));
	slot_getallattrs(slot);

	if (!predict_check_notnull(entry, rel, slot, v) ||
		!predict_check_checks(entry, rel, slot, v) ||
		!predict_check_unique(entry, rel, slot, oldslot, v))
		return false;
	for (int i = 0; i < entry->nfk; i++)
		if (!predict_check_fk(rel, &entry->fks[i], slot, oldslot, v))
			return false;
	return true;
}

/*
 * error_detail of a failure: {detail, schema, table, column, constraint}
 * and, when given, datatype; the fields PostgreSQL attaches to the error.
 */
Jsonb *
dlq_error_detail_json(const char *detail, const char *schema, const char *table,
					  const char *column, const char *constraint,
					  bool with_datatype, const char *datatype)
{
	const char *names[6] = {"detail", "schema", "table", "column", "constraint", "datatype"};
	const char *values[6] = {detail, schema, table, column, constraint, datatype};
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < (with_datatype ? 6 : 5); i++)
	{
		appendStringInfo(&buf, "%s\"%s\": ", i > 0 ? ", " : "", names[i]);
		if (values[i])
			escape_json(&buf, values[i]);
		else
			appendStringInfoString(&buf, "null");
	}
	appendStringInfoChar(&buf, '}');
	return dlq_jsonb(buf.data);
}

Jsonb *
dlq_violation_detail(Relation rel, const CaptureViolation *v)
{
	return dlq_error_detail_json(v->detail, get_namespace_name(RelationGetNamespace(rel)),
								 RelationGetRelationName(rel), v->column, v->constraint,
								 false, NULL);
}
