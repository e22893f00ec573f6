{% macro lake_partitions(source_name, table_name) -%}
    {#- The day partitions of a lake dataset, read with their `date` partition column. While the dataset has
        no partition yet, an empty relation of the source's declared columns: DuckDB refuses a glob that
        matches nothing. -#}
    {%- set relation = source(source_name, table_name) -%}
    {%- if not execute -%}
        {{ return("(select 1)") }}
    {%- endif -%}
    {%- set node = graph.sources['source.' ~ project_name ~ '.' ~ source_name ~ '.' ~ table_name] -%}
    {%- set lake_root = var('lake_root', env_var('DBT_LAKE_ROOT', env_var('TXGUARD_LAKE_ROOT', env_var('TXGUARD_HOME', '../.txguard') ~ '/lake'))) | string -%}
    {%- if "'" in lake_root or '\\' in lake_root or lake_root == '' -%}
        {{ exceptions.raise_compiler_error("var lake_root=" ~ lake_root ~ " is not a usable lake root") }}
    {%- endif -%}
    {%- set pattern = lake_root.rstrip('/') ~ '/' ~ node.meta['lake_dataset'] ~ '/date=*/data.parquet' -%}
    {%- set found = run_query("select count(*) from glob('" ~ pattern ~ "')").columns[0].values()[0] -%}
    {%- if found > 0 -%}
        read_parquet('{{ pattern }}', hive_partitioning = true, hive_types = {'date': date})
    {%- else -%}
        (
            select
                {%- for column in node.columns.values() %}
                cast(null as {{ column.data_type }}) as {{ column.name }},
                {%- endfor %}
                cast(null as date) as date
            where false
        )
    {%- endif -%}
{%- endmacro %}
