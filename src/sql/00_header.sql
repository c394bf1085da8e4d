/* dlq--1.0.sql: assembled by the Makefile from src/sql/NN_*.sql. */

\echo Use "CREATE EXTENSION dlq" to load this file. \quit
